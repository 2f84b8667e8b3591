"""The XML bodies of S3's common responses, rendered from plain values.

    list_buckets(owner, buckets)                           ListAllMyBucketsResult
    list_objects(listing, v2=False)                        ListBucketResult (v1 and v2)
    list_versions(listing)                                 ListVersionsResult
    initiate_multipart(bucket, key, upload_id)             InitiateMultipartUploadResult
    complete_multipart(location, bucket, key, etag, ...)   CompleteMultipartUploadResult
    list_parts(listing)                                    ListPartsResult
    list_uploads(listing)                                  ListMultipartUploadsResult
    delete_result(deleted, errors, quiet)                  DeleteResult
    copy_object(etag, last_modified, ...)                  CopyObjectResult
    copy_part(etag, last_modified, ...)                    CopyPartResult
    location(region)                                       LocationConstraint
    versioning(status, mfa_delete=None)                    VersioningConfiguration
    tagging(tags)                                          Tagging
    access_control_policy(policy)                          AccessControlPolicy
    cors(rules)                                            CORSConfiguration

Each returns the UTF-8 document with its XML declaration, in S3's namespace
(http://s3.amazonaws.com/doc/2006-03-01/). Times are seconds since the epoch, written as S3
writes them (2009-10-12T17:50:30.000Z); ETags are given without quotes and written with them.
With encoding_type="url" a listing percent-encodes what S3 encodes (Key, Prefix, Delimiter,
Marker, NextMarker, StartAfter, KeyMarker, NextKeyMarker, the CommonPrefixes), spaces as %20,
so that SDKs decoding with unquote_plus get the name back.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from shoal.proto.s3.xml import NS, XSI, AccessControlPolicy, CORSRule, Tag

__all__ = [
    "Bucket",
    "DeleteError",
    "Deleted",
    "ObjectEntry",
    "ObjectListing",
    "Owner",
    "PartEntry",
    "PartListing",
    "UploadEntry",
    "UploadListing",
    "VersionEntry",
    "access_control_policy",
    "complete_multipart",
    "copy_object",
    "copy_part",
    "cors",
    "delete_result",
    "initiate_multipart",
    "list_buckets",
    "list_objects",
    "list_parts",
    "list_uploads",
    "list_versions",
    "location",
    "tagging",
    "timestamp",
    "versioning",
]


def timestamp(seconds: float) -> str:
    """An S3 time: ISO 8601 in UTC with milliseconds."""
    millis = round(seconds * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + (
        f".{millis % 1000:03d}Z"
    )


@dataclass(frozen=True, slots=True)
class Owner:
    id: str
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    created: float
    region: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    key: str
    last_modified: float
    etag: str
    size: int
    storage_class: str = "STANDARD"
    owner: Owner | None = None
    checksum_algorithm: str | None = None  # "CRC32", ...


@dataclass(frozen=True, slots=True)
class VersionEntry:
    key: str
    version_id: str
    is_latest: bool
    last_modified: float
    etag: str = ""
    size: int = 0
    delete_marker: bool = False
    owner: Owner | None = None
    storage_class: str = "STANDARD"


@dataclass(slots=True)
class ObjectListing:
    """A page of ListObjects (v1 or v2) or ListObjectVersions, and what was asked."""

    bucket: str
    prefix: str = ""
    delimiter: str | None = None
    max_keys: int = 1000
    is_truncated: bool = False
    contents: Sequence[ObjectEntry] = ()
    versions: Sequence[VersionEntry] = ()
    common_prefixes: Sequence[str] = ()
    encoding_type: str | None = None
    marker: str = ""  # v1
    next_marker: str | None = None  # v1, when truncated (and a delimiter was given)
    continuation_token: str | None = None  # v2
    next_continuation_token: str | None = None  # v2
    start_after: str | None = None  # v2
    key_marker: str = ""  # versions
    version_id_marker: str = ""  # versions
    next_key_marker: str | None = None  # versions
    next_version_id_marker: str | None = None  # versions
    fetch_owner: bool = False  # v2: Owner only when asked (v1 always)


@dataclass(frozen=True, slots=True)
class PartEntry:
    part_number: int
    last_modified: float
    etag: str
    size: int
    checksums: dict[str, str] = field(default_factory=dict)  # "crc32" -> base64


@dataclass(slots=True)
class PartListing:
    bucket: str
    key: str
    upload_id: str
    owner: Owner
    parts: Sequence[PartEntry] = ()
    part_number_marker: int = 0
    next_part_number_marker: int | None = None
    max_parts: int = 1000
    is_truncated: bool = False
    storage_class: str = "STANDARD"


@dataclass(frozen=True, slots=True)
class UploadEntry:
    key: str
    upload_id: str
    initiated: float
    owner: Owner
    storage_class: str = "STANDARD"


@dataclass(slots=True)
class UploadListing:
    bucket: str
    uploads: Sequence[UploadEntry] = ()
    common_prefixes: Sequence[str] = ()
    prefix: str = ""
    delimiter: str | None = None
    key_marker: str = ""
    upload_id_marker: str = ""
    next_key_marker: str | None = None
    next_upload_id_marker: str | None = None
    max_uploads: int = 1000
    is_truncated: bool = False
    encoding_type: str | None = None


def _doc(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode").encode()


def _root(name: str) -> ET.Element:
    return ET.Element(name, xmlns=NS)


def _add(parent: ET.Element, name: str, text: object = None) -> ET.Element:
    element = ET.SubElement(parent, name)
    if text is not None:
        element.text = _str(text)
    return element


def _str(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quoted(etag: str) -> str:
    return f'"{etag.strip(chr(34))}"'


def _owner(parent: ET.Element, owner: Owner, name: str = "Owner") -> None:
    element = _add(parent, name)
    _add(element, "ID", owner.id)
    _add(element, "DisplayName", owner.display_name)


def _encoder(encoding_type: str | None) -> type[_Plain] | type[_Url]:
    return _Url if encoding_type == "url" else _Plain


class _Plain:
    @staticmethod
    def encode(text: str) -> str:
        return text


class _Url:
    @staticmethod
    def encode(text: str) -> str:
        return quote(text.encode("utf-8", "surrogateescape"), safe="/")


def list_buckets(owner: Owner, buckets: Sequence[Bucket]) -> bytes:
    root = _root("ListAllMyBucketsResult")
    _owner(root, owner)
    element = _add(root, "Buckets")
    for bucket in buckets:
        b = _add(element, "Bucket")
        _add(b, "Name", bucket.name)
        _add(b, "CreationDate", timestamp(bucket.created))
        if bucket.region is not None:
            _add(b, "BucketRegion", bucket.region)
    return _doc(root)


def _prefixes(root: ET.Element, prefixes: Sequence[str], enc: type[_Plain] | type[_Url]) -> None:
    for prefix in prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", enc.encode(prefix))


def list_objects(listing: ObjectListing, v2: bool = False) -> bytes:
    """ListBucketResult of ListObjects (v1) or ListObjectsV2."""
    enc = _encoder(listing.encoding_type)
    root = _root("ListBucketResult")
    _add(root, "Name", listing.bucket)
    _add(root, "Prefix", enc.encode(listing.prefix))
    if v2:
        if listing.continuation_token is not None:
            _add(root, "ContinuationToken", listing.continuation_token)
        if listing.next_continuation_token is not None:
            _add(root, "NextContinuationToken", listing.next_continuation_token)
        if listing.start_after is not None:
            _add(root, "StartAfter", enc.encode(listing.start_after))
        _add(root, "KeyCount", len(listing.contents) + len(listing.common_prefixes))
    else:
        _add(root, "Marker", enc.encode(listing.marker))
        if listing.next_marker is not None:
            _add(root, "NextMarker", enc.encode(listing.next_marker))
    _add(root, "MaxKeys", listing.max_keys)
    if listing.delimiter is not None:
        _add(root, "Delimiter", enc.encode(listing.delimiter))
    if listing.encoding_type is not None:
        _add(root, "EncodingType", listing.encoding_type)
    _add(root, "IsTruncated", listing.is_truncated)
    for entry in listing.contents:
        item = _add(root, "Contents")
        _add(item, "Key", enc.encode(entry.key))
        _add(item, "LastModified", timestamp(entry.last_modified))
        _add(item, "ETag", _quoted(entry.etag))
        if entry.checksum_algorithm:
            _add(item, "ChecksumAlgorithm", entry.checksum_algorithm)
        _add(item, "Size", entry.size)
        if entry.owner is not None and (listing.fetch_owner or not v2):
            _owner(item, entry.owner)
        _add(item, "StorageClass", entry.storage_class)
    _prefixes(root, listing.common_prefixes, enc)
    return _doc(root)


def list_versions(listing: ObjectListing) -> bytes:
    """ListVersionsResult: versions and delete markers in the order given."""
    enc = _encoder(listing.encoding_type)
    root = _root("ListVersionsResult")
    _add(root, "Name", listing.bucket)
    _add(root, "Prefix", enc.encode(listing.prefix))
    _add(root, "KeyMarker", enc.encode(listing.key_marker))
    _add(root, "VersionIdMarker", listing.version_id_marker)
    if listing.next_key_marker is not None:
        _add(root, "NextKeyMarker", enc.encode(listing.next_key_marker))
    if listing.next_version_id_marker is not None:
        _add(root, "NextVersionIdMarker", listing.next_version_id_marker)
    _add(root, "MaxKeys", listing.max_keys)
    if listing.delimiter is not None:
        _add(root, "Delimiter", enc.encode(listing.delimiter))
    if listing.encoding_type is not None:
        _add(root, "EncodingType", listing.encoding_type)
    _add(root, "IsTruncated", listing.is_truncated)
    for entry in listing.versions:
        item = _add(root, "DeleteMarker" if entry.delete_marker else "Version")
        _add(item, "Key", enc.encode(entry.key))
        _add(item, "VersionId", entry.version_id)
        _add(item, "IsLatest", entry.is_latest)
        _add(item, "LastModified", timestamp(entry.last_modified))
        if not entry.delete_marker:
            _add(item, "ETag", _quoted(entry.etag))
            _add(item, "Size", entry.size)
            _add(item, "StorageClass", entry.storage_class)
        if entry.owner is not None:
            _owner(item, entry.owner)
    _prefixes(root, listing.common_prefixes, enc)
    return _doc(root)


def initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    root = _root("InitiateMultipartUploadResult")
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    return _doc(root)


def _checksums(parent: ET.Element, checksums: dict[str, str]) -> None:
    for algorithm, value in checksums.items():
        _add(parent, "Checksum" + algorithm.upper(), value)


def complete_multipart(
    location: str,
    bucket: str,
    key: str,
    etag: str,
    checksums: dict[str, str] | None = None,
    checksum_type: str | None = None,
) -> bytes:
    root = _root("CompleteMultipartUploadResult")
    _add(root, "Location", location)
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "ETag", _quoted(etag))
    _checksums(root, checksums or {})
    if checksum_type:
        _add(root, "ChecksumType", checksum_type)
    return _doc(root)


def list_parts(listing: PartListing) -> bytes:
    root = _root("ListPartsResult")
    _add(root, "Bucket", listing.bucket)
    _add(root, "Key", listing.key)
    _add(root, "UploadId", listing.upload_id)
    _owner(root, listing.owner, "Initiator")
    _owner(root, listing.owner)
    _add(root, "StorageClass", listing.storage_class)
    _add(root, "PartNumberMarker", listing.part_number_marker)
    if listing.next_part_number_marker is not None:
        _add(root, "NextPartNumberMarker", listing.next_part_number_marker)
    _add(root, "MaxParts", listing.max_parts)
    _add(root, "IsTruncated", listing.is_truncated)
    for part in listing.parts:
        item = _add(root, "Part")
        _add(item, "PartNumber", part.part_number)
        _add(item, "LastModified", timestamp(part.last_modified))
        _add(item, "ETag", _quoted(part.etag))
        _add(item, "Size", part.size)
        _checksums(item, part.checksums)
    return _doc(root)


def list_uploads(listing: UploadListing) -> bytes:
    enc = _encoder(listing.encoding_type)
    root = _root("ListMultipartUploadsResult")
    _add(root, "Bucket", listing.bucket)
    _add(root, "KeyMarker", enc.encode(listing.key_marker))
    _add(root, "UploadIdMarker", listing.upload_id_marker)
    if listing.next_key_marker is not None:
        _add(root, "NextKeyMarker", enc.encode(listing.next_key_marker))
    if listing.next_upload_id_marker is not None:
        _add(root, "NextUploadIdMarker", listing.next_upload_id_marker)
    _add(root, "Prefix", enc.encode(listing.prefix))
    if listing.delimiter is not None:
        _add(root, "Delimiter", enc.encode(listing.delimiter))
    if listing.encoding_type is not None:
        _add(root, "EncodingType", listing.encoding_type)
    _add(root, "MaxUploads", listing.max_uploads)
    _add(root, "IsTruncated", listing.is_truncated)
    for upload in listing.uploads:
        item = _add(root, "Upload")
        _add(item, "Key", enc.encode(upload.key))
        _add(item, "UploadId", upload.upload_id)
        _owner(item, upload.owner, "Initiator")
        _owner(item, upload.owner)
        _add(item, "StorageClass", upload.storage_class)
        _add(item, "Initiated", timestamp(upload.initiated))
    _prefixes(root, listing.common_prefixes, enc)
    return _doc(root)


@dataclass(frozen=True, slots=True)
class Deleted:
    key: str
    version_id: str | None = None
    delete_marker: bool = False
    delete_marker_version_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteError:
    key: str
    code: str
    message: str
    version_id: str | None = None


def delete_result(
    deleted: Sequence[Deleted], errors: Sequence[DeleteError], quiet: bool = False
) -> bytes:
    """DeleteResult; a quiet request lists only the errors."""
    root = _root("DeleteResult")
    for item in () if quiet else deleted:
        element = _add(root, "Deleted")
        _add(element, "Key", item.key)
        if item.version_id is not None:
            _add(element, "VersionId", item.version_id)
        if item.delete_marker:
            _add(element, "DeleteMarker", True)
            if item.delete_marker_version_id is not None:
                _add(element, "DeleteMarkerVersionId", item.delete_marker_version_id)
    for error in errors:
        element = _add(root, "Error")
        _add(element, "Key", error.key)
        if error.version_id is not None:
            _add(element, "VersionId", error.version_id)
        _add(element, "Code", error.code)
        _add(element, "Message", error.message)
    return _doc(root)


def _copy_result(name: str, etag: str, last_modified: float, checksums: dict[str, str]) -> bytes:
    root = _root(name)
    _add(root, "ETag", _quoted(etag))
    _add(root, "LastModified", timestamp(last_modified))
    _checksums(root, checksums)
    return _doc(root)


def copy_object(etag: str, last_modified: float, checksums: dict[str, str] | None = None) -> bytes:
    return _copy_result("CopyObjectResult", etag, last_modified, checksums or {})


def copy_part(etag: str, last_modified: float, checksums: dict[str, str] | None = None) -> bytes:
    return _copy_result("CopyPartResult", etag, last_modified, checksums or {})


def location(region: str | None) -> bytes:
    """GetBucketLocation: empty for us-east-1, as S3 answers."""
    root = _root("LocationConstraint")
    if region and region != "us-east-1":
        root.text = region
    return _doc(root)


def versioning(status: str | None, mfa_delete: str | None = None) -> bytes:
    """GetBucketVersioning: no Status for a bucket never versioned."""
    root = _root("VersioningConfiguration")
    if status is not None:
        _add(root, "Status", status)
    if mfa_delete is not None:
        _add(root, "MfaDelete", mfa_delete)
    return _doc(root)


def tagging(tags: Sequence[Tag]) -> bytes:
    root = _root("Tagging")
    tag_set = _add(root, "TagSet")
    for tag in tags:
        element = _add(tag_set, "Tag")
        _add(element, "Key", tag.key)
        _add(element, "Value", tag.value)
    return _doc(root)


_GRANTEE_FIELD = {"CanonicalUser": "ID", "Group": "URI", "AmazonCustomerByEmail": "EmailAddress"}


def access_control_policy(policy: AccessControlPolicy) -> bytes:
    root = _root("AccessControlPolicy")
    owner = _add(root, "Owner")
    _add(owner, "ID", policy.owner_id)
    if policy.owner_name is not None:
        _add(owner, "DisplayName", policy.owner_name)
    acl = _add(root, "AccessControlList")
    for grant in policy.grants:
        element = _add(acl, "Grant")
        grantee = ET.SubElement(
            element,
            "Grantee",
            {"xmlns:xsi": XSI, "xsi:type": grant.grantee_type},
        )
        _add(grantee, _GRANTEE_FIELD[grant.grantee_type], grant.grantee)
        if grant.display_name is not None:
            _add(grantee, "DisplayName", grant.display_name)
        _add(element, "Permission", grant.permission)
    return _doc(root)


def cors(rules: Sequence[CORSRule]) -> bytes:
    root = _root("CORSConfiguration")
    for rule in rules:
        element = _add(root, "CORSRule")
        if rule.id is not None:
            _add(element, "ID", rule.id)
        for name, values in (
            ("AllowedHeader", rule.allowed_headers),
            ("AllowedMethod", rule.allowed_methods),
            ("AllowedOrigin", rule.allowed_origins),
            ("ExposeHeader", rule.expose_headers),
        ):
            for value in values:
                _add(element, name, value)
        if rule.max_age_seconds is not None:
            _add(element, "MaxAgeSeconds", rule.max_age_seconds)
    return _doc(root)
