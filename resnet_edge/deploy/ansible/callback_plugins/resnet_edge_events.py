"""Ansible callback that writes one JSON line per task result to $RESNET_EDGE_EVENTS, which
`resnet-edge deploy` reads while the playbook runs and turns into its own console lines. It is
an aggregate callback: Ansible's own output stays whatever the stdout callback is."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: resnet_edge_events
    type: aggregate
    short_description: task results as JSON lines for resnet-edge deploy
    description: Writes each task result (host, task, status, rc, stdout, stderr, msg) to $RESNET_EDGE_EVENTS.
"""
KEPT = ("rc", "stdout", "stderr", "msg", "changed", "skipped", "item", "size", "checksum")


def _part(result, name):
    # ansible-core 2.19 names them task/host/result; 2.17 and 2.18 _task/_host/_result
    return getattr(result, name, None) if hasattr(result, name) else getattr(result, "_" + name)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "resnet_edge_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._path = os.environ.get("RESNET_EDGE_EVENTS")
        self._started = {}

    def _write(self, **event):
        if not self._path:
            return
        event["time"] = time.time()
        with open(self._path, "a") as handle:
            handle.write(json.dumps(event, default=str) + "\n")

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._started[task.get_name()] = time.time()

    def _result(self, result, status):
        task, host, data = _part(result, "task"), _part(result, "host"), _part(result, "result")
        if "results" in data:  # a loop's summary: each item was written as it finished
            return
        name = task.get_name()
        fields = {k: data.get(k) for k in KEPT if k in data}
        for key in ("stdout", "stderr", "msg"):
            if isinstance(fields.get(key), str):
                fields[key] = fields[key][-4000:]
        self._write(host=host.get_name(), task=name, status=status,
                    seconds=time.time() - self._started.get(name, time.time()), **fields)

    def v2_runner_on_ok(self, result):
        self._result(result, "changed" if _part(result, "result").get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "unreachable")

    def v2_runner_item_on_ok(self, result):
        self.v2_runner_on_ok(result)

    def v2_runner_item_on_failed(self, result):
        self._result(result, "failed")

    def v2_runner_item_on_skipped(self, result):
        self._result(result, "skipped")
