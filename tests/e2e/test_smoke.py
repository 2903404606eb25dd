from tests.builders import create_body
from tests.e2e.conftest import local_at


async def test_book_and_read_back(api):
    body = create_body(local_at(api, 3, "09:30"), type_="general checkup", session="Morning")
    status, created = await api.post("/v1/appointments", body)
    assert status == 201, created
    assert created["appointment_id"].startswith("appt_") and created["token"] is None
    data = created["data"]
    assert data["status"] == "confirmed" and data["batch"] == "MA" and data["appointment_type"] == api.ids["checkup"]
    status, got = await api.get(f"/v1/appointments/{data['appointment_id']}?min_position={data['position']}")
    assert status == 200, got
    assert got["data"]["appointment_id"] == data["appointment_id"]
