"""Tenth review: a Sora remix (and an edit or extension that names no model) is admitted on the
minimum reservation, $0.000001, whatever it costs.

`VideosAdapter.parse_request` leaves `model` None for everything but a create (a remix's body is
`{"prompt": ...}`), and `Admission.estimate` returns $0 for "no model, an estimate" (a rule meant
for batch submissions, which bill nothing): the reservation is MIN_RESERVE. The job is then charged
its real cost from the answer (sora-2-pro, 12 s above 720p: $6), but admission never weighed it:
any number of remixes in flight together are all admitted on a budget with room for none of them
(below, three $6 remixes on a $10 budget: $18 spent), and one remix is admitted with $0.000001
left. A create of the same clip is refused (tests/e2e/test_media_e2e.py
test_sora_at_the_cap_is_refused_before_it_runs). Fix: reserve a model-less video job at the
dearest Sora rate (sora-2-pro high-res, 12 s: the estimate it already computes, priced as
sora-2-pro), never the batch-submission $0.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.attacks.tenth_review_support import OPENAI, OPENAI_AUTH, answered, make, rows, send

JOB = {"id": "video_src", "object": "video", "model": "sora-2-pro", "status": "queued", "seconds": "12",
       "size": "1792x1024", "created_at": 1764600000, "progress": 0}  # $0.50 x 12 s = $6.00
EDIT = (b'--b\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\nContent-Type: video/mp4\r\n\r\n'
        b'\x00\x00\x00\x18ftypmp42\r\n--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nat night\r\n--b--\r\n')
EXTEND = (b'--b\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\nContent-Type: video/mp4\r\n\r\n'
          b'\x00\x00\x00\x18ftypmp42\r\n--b\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n12\r\n--b--\r\n')


@pytest.mark.parametrize("path,body", [
    ("/v1/videos/video_src/remix", b'{"prompt": "at night"}'),
    ("/v1/videos/edits", EDIT),
    ("/v1/videos/extensions", EXTEND),
], ids=["remix", "edit", "extension"])
def test_video_jobs_in_flight_together_never_spend_past_the_cap(tmp_path, path, body):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    try:
        admitted = []
        for _ in range(3):  # three jobs sent at once: all admitted before any answer comes back
            ex, refused = send(gw, OPENAI, path, body, OPENAI_AUTH)
            if refused is None:
                admitted.append(ex)
        for i, ex in enumerate(admitted):
            answered(gw, ex, json.dumps({**JOB, "id": f"video_{i}"}).encode())
        got = rows(gw)
        spent = sum(Decimal(str(r["charged_usd"] or 0)) for r in got)
        reserved = [ex.extra["reservation"].amount for ex in admitted]
        # one $6 job may overshoot a $10 cap by what it costs; three of them admitted on $0.000001 each may not
        assert len(admitted) <= 2 and spent <= Decimal(16), (len(admitted), reserved, spent)
    finally:
        gw.close()


def test_a_remix_is_refused_when_the_budget_has_a_cent_left(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 6.01}}\n")
    try:
        ex, refused = send(gw, OPENAI, "/v1/videos", b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
                           b'sora-2-pro\r\n--b\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n12\r\n'
                           b'--b\r\nContent-Disposition: form-data; name="size"\r\n\r\n1792x1024\r\n--b--\r\n', OPENAI_AUTH)
        assert refused is None
        answered(gw, ex, json.dumps(JOB).encode())
        rows(gw)  # $6.00 of $6.01 spent
        ex, refused = send(gw, OPENAI, "/v1/videos/video_src/remix", b'{"prompt": "again"}', OPENAI_AUTH)
        if refused is None:
            answered(gw, ex, json.dumps({**JOB, "id": "video_2"}).encode())
        spent = sum(Decimal(str(r["charged_usd"] or 0)) for r in rows(gw))
        assert refused is not None, f"a $6 remix admitted with $0.01 left: ${spent} spent of $6.01"
    finally:
        gw.close()
