"""CORS as S3 answers it (shoal.proto.s3.cors), from rules as boto3 writes them."""

from __future__ import annotations

import pytest

from shoal.proto.s3 import cors
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.xml import parse_cors

from .s3_helpers import boto_request


def _rules() -> list[cors.CORSRule]:
    _, body = boto_request(
        "put_bucket_cors",
        Bucket="b",
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedMethods": ["PUT", "POST", "DELETE"],
                    "AllowedOrigins": ["https://*.example.com"],
                    "AllowedHeaders": ["content-*", "x-amz-*"],
                    "ExposeHeaders": ["ETag", "x-amz-request-id"],
                    "MaxAgeSeconds": 3000,
                },
                {"AllowedMethods": ["GET", "HEAD"], "AllowedOrigins": ["*"]},
            ]
        },
    )
    return parse_cors(body)


def _preflight(origin: str, method: str, asked: str = "") -> dict[str, str]:
    headers = [("origin", origin), ("access-control-request-method", method)]
    if asked:
        headers.append(("access-control-request-headers", asked))
    return dict(cors.preflight(_rules(), headers))


def test_preflight_allowed() -> None:
    got = _preflight("https://app.example.com", "PUT", "Content-Type, X-Amz-Date")
    assert got["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert got["Access-Control-Allow-Methods"] == "PUT, POST, DELETE"
    assert got["Access-Control-Allow-Headers"] == "Content-Type, X-Amz-Date"
    assert got["Access-Control-Expose-Headers"] == "ETag, x-amz-request-id"
    assert got["Access-Control-Max-Age"] == "3000"
    assert got["Access-Control-Allow-Credentials"] == "true"
    assert got["Vary"] == cors.VARY
    anyone = _preflight("http://elsewhere.org", "GET")
    assert anyone["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in anyone


def test_preflight_refused() -> None:
    for origin, method, asked in [
        ("https://evil.org", "PUT", ""),  # origin
        ("https://app.example.com", "PATCH", ""),  # method
        ("https://app.example.com", "PUT", "Authorization"),  # header
        ("http://elsewhere.org", "GET", "X-Custom"),  # the '*' rule allows no header
    ]:
        with pytest.raises(S3Error) as e:
            _preflight(origin, method, asked)
        assert (e.value.code, e.value.status) == ("AccessDenied", 403)
    with pytest.raises(S3Error) as e:
        cors.preflight(None, [("origin", "o"), ("access-control-request-method", "GET")])
    assert "not enabled" in e.value.message
    with pytest.raises(S3Error) as e:
        cors.preflight(_rules(), [("access-control-request-method", "GET")])
    assert e.value.status == 400


def test_actual_requests() -> None:
    got = dict(cors.actual(_rules(), [("origin", "https://a.example.com")], "DELETE"))
    assert got["Access-Control-Allow-Origin"] == "https://a.example.com"
    assert cors.actual(_rules(), [("origin", "https://evil.org")], "DELETE") == []
    assert cors.actual(_rules(), [], "GET") == []
    assert cors.actual(None, [("origin", "https://a.example.com")], "GET") == []
