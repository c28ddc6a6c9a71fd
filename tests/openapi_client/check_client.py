"""Calls a running `miqat serve` through a client generated from its /openapi.json.

Usage: check_client.py BASE_URL CATALOG_DIR (the generated package `miqat_client` must be
importable). Exits non-zero with a message on the first answer that does not match what the
server sends without the client. Each check compares the client's typed answer with the raw
JSON of the same request, so a contract that types a field wrongly fails here.
"""

import csv
import sys
from pathlib import Path

import httpx
from miqat_client import Client
from miqat_client.api.applicant import reserve
from miqat_client.api.public import province_caravans, provinces
from miqat_client.models import Caravan, Problem, Reservation, ReserveRequest
from miqat_client.models.problem_code import ProblemCode


def check(condition, message):
    if not condition:
        sys.exit(f"generated client check failed: {message}")


def main(base_url, catalog):
    client = Client(base_url=base_url, raise_on_unexpected_status=True)
    raw = httpx.Client(base_url=base_url)

    listed = provinces.sync(client=client)
    check(isinstance(listed, list) and listed, f"provinces: {listed!r}")
    holders = list(csv.DictReader(open(Path(catalog) / "holders.csv", encoding="utf-8")))
    caravans_csv = list(csv.DictReader(open(Path(catalog) / "caravans.csv", encoding="utf-8")))
    eligible = next(
        h for h in holders
        if h["receipt_status"] == "valid" and h["receipt_date"] <= "1386/01/31"
    )
    province_id = int(eligible["province_id"])
    city = eligible["city"]

    # The caravan list WITH filters, through the client: query parameters are sent as such.
    answer = province_caravans.sync_detailed(
        id=province_id, client=client, city=city, available=True
    )
    check(answer.status_code == 200, f"caravan list: {answer.status_code}")
    typed = answer.parsed
    check(all(isinstance(c, Caravan) for c in typed), f"caravan list items: {typed!r}")
    expected_ids = sorted(
        c["id"] for c in caravans_csv
        if int(c["province_id"]) == province_id and c["city"] == city
    )
    check(
        sorted(c.id for c in typed) == expected_ids,
        f"filtered list {sorted(c.id for c in typed)} != caravans of {city} {expected_ids}",
    )
    check(all(c.city == city and c.seats_free > 0 for c in typed), "filter not applied")
    plain = raw.get(
        f"/v1/provinces/{province_id}/caravans", params={"city": city, "available": "true"}
    )
    check([c.to_dict() for c in typed] == plain.json(), "typed list differs from the raw JSON")
    unfiltered = province_caravans.sync(id=province_id, client=client)
    check(len(unfiltered) >= len(typed), "the unfiltered list is shorter")

    # ETag / If-None-Match through the client's documented header parameter.
    etag = answer.headers.get("etag")
    check(etag, "no ETag on the caravan list")
    again = province_caravans.sync_detailed(
        id=province_id, client=client, city=city, available=True, if_none_match=etag
    )
    check(again.status_code == 304, f"If-None-Match: {again.status_code}")

    # A reservation: a typed 201 with date-time fields, then a typed problem with its code.
    body = ReserveRequest(
        national_id=eligible["national_id"],
        tracking_code=eligible["tracking_code"],
        caravan_id=expected_ids[0],
    )
    made = reserve.sync_detailed(client=client, body=body)
    check(made.status_code == 201, f"reserve: {made.status_code} {made.content!r}")
    check(isinstance(made.parsed, Reservation), f"reserve: {made.parsed!r}")
    check(made.parsed.created_at.tzinfo is not None, "created_at is not a zoned date-time")
    check(made.headers.get("location", "").endswith(made.parsed.id), "no Location header")
    refused = reserve.sync_detailed(client=client, body=body)
    check(isinstance(refused.parsed, Problem), f"second reserve: {refused.parsed!r}")
    check(
        refused.parsed.code == ProblemCode.ALREADY_RESERVED,
        f"second reserve code {refused.parsed.code}",
    )
    check(
        refused.headers.get("content-type") == "application/problem+json",
        f"problem content type {refused.headers.get('content-type')}",
    )
    wrong = ReserveRequest(
        national_id=eligible["national_id"], tracking_code="wrong", caravan_id=expected_ids[0]
    )
    denied = reserve.sync_detailed(client=client, body=wrong)
    check(denied.status_code == 401, f"wrong tracking code: {denied.status_code}")
    check(denied.parsed.code == ProblemCode.INVALID_CREDENTIALS, f"{denied.parsed!r}")
    print(
        f"generated client: {len(typed)} caravans of {city} listed with filters, 304 on "
        f"If-None-Match, reservation {made.parsed.id[:8]}... made, problems typed"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
