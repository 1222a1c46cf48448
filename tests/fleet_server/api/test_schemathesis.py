"""Property-based API testing with schemathesis against the app's own OpenAPI document.

Every generated request (with a valid admin token) must not produce a 5xx, and every
status code the app answers with must be documented for that operation.

The app is built at import time because schemathesis parametrizes at collection;
(``schemathesis.pytest.from_fixture`` does not work with pytest 9: it reads a private
``_nodeid`` attribute that pytest 9 removed).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role
from tests.fleet_server.support import make_env

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "12"))

_TMP = Path(tempfile.mkdtemp(prefix="edgefleet-schemathesis-"))
ENV = make_env(_TMP / "data")
atexit.register(shutil.rmtree, _TMP, True)
atexit.register(ENV.services.store.close)
# An owner-less token (as `edgefleet server token create` makes): generated calls cannot
# lock it out by demoting or disabling its user.
_, _SECRET = ENV.services.tokens.create(SYSTEM, name="schemathesis", role=Role.ADMIN,
                                        user_id=None, owner_role=None)
ADMIN_HEADERS = {"Authorization": f"Bearer {_SECRET}"}

schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", ENV.app)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_and_answers_documented_codes(case: Any) -> None:
    case.call_and_validate(headers=ADMIN_HEADERS,
                           checks=[not_a_server_error, status_code_conformance])
