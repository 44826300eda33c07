"""Tenth review: a Sora extension's `seconds` is read from a multipart body differently from the
way a server reads it, and the extension is billed by what spendgate read.

An extension bills the seconds its REQUEST asks for (`VideosAdapter`: `request_usage`; the answer
shows the stitched total). `openai_media.multipart_fields` never looks at the Content-Type's
boundary: it takes the first `--X` line followed by a Content-Disposition as the boundary, and a
field given twice keeps its LAST value. A form parser (RFC 7578 / RFC 2046; werkzeug below, Go's
mime/multipart alike) splits on the declared boundary, skips everything before its first delimiter
(the preamble), and `form["seconds"]` is the FIRST value. So:

* a preamble holding a decoy part (`--FAKE ... name="seconds" ... 4 --FAKE--`) before the real
  parts (`--REAL ... seconds 12`): the provider makes 12 s, spendgate bills 4 (sora-2-pro at
  1792x1024: $2 charged for $6);
* `seconds` sent twice, 12 then 4: the same.

Fix: read the boundary from the request's Content-Type (pass it to parse_request), and for a
request-fixed charge take the largest value of a repeated field (errs high).
"""

from __future__ import annotations

import io
import json

import pytest
from werkzeug.formparser import parse_form_data

from tests.attacks.tenth_review_support import OPENAI, OPENAI_AUTH, answered, make, rows, send

CLIP = b'Content-Disposition: form-data; name="video"; filename="v.mp4"\r\nContent-Type: video/mp4\r\n\r\n\x00\x00ftyp\r\n'
PREAMBLE = (b'--FAKE\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n4\r\n--FAKE--\r\n'
            b'--REAL\r\n' + CLIP +
            b'--REAL\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2-pro\r\n'
            b'--REAL\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n12\r\n--REAL--\r\n')
TWICE = (b'--REAL\r\n' + CLIP +
         b'--REAL\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2-pro\r\n'
         b'--REAL\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n12\r\n'
         b'--REAL\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n4\r\n--REAL--\r\n')


def server_reads(body: bytes) -> str:
    """What a multipart/form-data server reads as `seconds` (boundary from the Content-Type)."""
    env = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "multipart/form-data; boundary=REAL",
           "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    _, form, _ = parse_form_data(env)
    return form["seconds"]


@pytest.mark.parametrize("body", [PREAMBLE, TWICE], ids=["decoy-preamble", "seconds-twice"])
def test_an_extension_is_billed_at_least_the_seconds_the_server_reads(tmp_path, body):
    made = int(server_reads(body))
    assert made == 12
    gw = make(tmp_path, "defaults: {user: {day: 50}}\n")
    try:
        headers = {**OPENAI_AUTH, "content-type": "multipart/form-data; boundary=REAL"}
        ex, refused = send(gw, OPENAI, "/v1/videos/extensions", body, headers)
        assert refused is None
        answered(gw, ex, json.dumps({"id": "video_x", "object": "video", "model": "sora-2-pro", "status": "queued",
                                     "seconds": str(8 + made), "size": "1792x1024"}).encode())
        (row,) = rows(gw)
        assert row["endpoint"] == "videos.extend"
        assert row["output_video_seconds"] >= made, (row["output_video_seconds"], row["cost_usd"])
    finally:
        gw.close()
