"""A custom run from the dashboard cannot set the work pool's job variables that reach the worker's host.

The schema check here is Prefect's own (``prefect.utilities.schema_tools.validate``, what the server runs on a
flow run's job variables); tests/test_flows_engines.py checks the same against a real server and pool.
"""

from __future__ import annotations

import json

import pytest
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.utilities.schema_tools import validate
from prefect.utilities.schema_tools.validation import ValidationError

from flows.engine import FREE_JOB_VARIABLES, job_template, lock_job_variables
from tests.conftest import ROOT

PINNED = {"process": {"working_dir": "/srv/tlops"}, "docker": {"image": "tlops-worker:1.2"},
          "kubernetes": {"image": "tlops-worker:1.2"}}
# what a dashboard user would try: run another command, change the environment or the image, mount the host
ATTEMPTS = {"process": [{"command": "sh -c 'cat ~/.aws/credentials'"}, {"env": {"AWS_ENDPOINT_URL": "http://evil"}},
                        {"working_dir": "/tmp"}, {"something_new": 1}],
            "docker": [{"privileged": True}, {"volumes": ["/:/host"]}, {"image": "attacker/image"},
                       {"command": "id"}, {"network_mode": "host"}, {"env": {"TLOPS_X": "1"}}],
            "kubernetes": [{"image": "attacker/image"}, {"command": "id"}, {"namespace": "kube-system"},
                           {"service_account_name": "admin"}, {"env": {"TLOPS_X": "1"}}]}


def _locked(pool_type: str) -> dict:
    return lock_job_variables(job_template(ROOT, pool_type), FREE_JOB_VARIABLES[pool_type], PINNED[pool_type])


@pytest.mark.parametrize("pool_type", sorted(FREE_JOB_VARIABLES))
def test_a_locked_pool_refuses_every_job_variable_but_the_free_ones(pool_type):
    locked = _locked(pool_type)
    WorkPoolCreate(name="tlops", type=pool_type, base_job_template=locked)  # a template the server accepts
    schema = locked["variables"]
    assert set(schema["properties"]) == FREE_JOB_VARIABLES[pool_type] | set(PINNED[pool_type])
    for attempt in ATTEMPTS[pool_type]:
        with pytest.raises(ValidationError):
            validate(attempt, schema, raise_on_error=True, preprocess=True, ignore_required=True)
    validate(PINNED[pool_type], schema, raise_on_error=True, preprocess=True, ignore_required=True)
    validate({"name": "my-run", "labels": {"team": "vision"}}, schema, raise_on_error=True, preprocess=True,
             ignore_required=True)


@pytest.mark.parametrize("pool_type", sorted(FREE_JOB_VARIABLES))
def test_the_locked_variables_are_fixed_in_the_job_configuration(pool_type):
    template, locked = job_template(ROOT, pool_type), _locked(pool_type)
    configured = json.dumps(locked["job_configuration"])
    for name in template["variables"]["properties"]:
        settable = name in FREE_JOB_VARIABLES[pool_type] or name in PINNED[pool_type]
        assert (("{{ " + name + " }}") in configured) == (settable and ("{{ " + name + " }}") in json.dumps(
            template["job_configuration"])), name

