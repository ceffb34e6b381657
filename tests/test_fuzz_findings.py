"""What fuzzing the teams routes against their OpenAPI description found (tests/test_openapi_live.py)."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("query", [
    "until=9999-12-31T23:59:59-23:59",           # past year 9999 in UTC: the answer could not name it
    "since=0001-01-01T00:00:00%2B23:59",         # before year 1 in UTC
])
def test_usage_times_the_answer_cannot_name_are_a_400_not_a_500(client, auth, query):
    response = client.get(f"/api/usage?{query}", headers=auth.headers())
    assert response.status_code == 400
    assert "between 0001-01-01 and 9999-12-31" in response.get_json()["error"]


def test_usage_until_early_in_year_1_leaves_since_at_the_start_of_time(client, auth):
    response = client.get("/api/usage?until=0001-01-02T00:00:00Z", headers=auth.headers())
    assert response.status_code == 200
    assert response.get_json()["since"].startswith("0001-01-01T00:00:00")


@pytest.mark.parametrize("days, expires", [(30.0, True), (None, False)])
def test_key_expiry_accepts_a_whole_float_and_null(client, auth, days, expires):
    response = client.post("/api/keys", headers=auth.headers(),
                           json={"name": "fuzz", "scopes": None, "expires_in_days": days})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["expires_at"] is not None) is expires
    assert body["scopes"] == ["read", "proxy"]


def test_key_expiry_refuses_a_fraction_of_a_day(client, auth):
    response = client.post("/api/keys", headers=auth.headers(), json={"name": "fuzz", "expires_in_days": 1.5})
    assert response.status_code == 400
