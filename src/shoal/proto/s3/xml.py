"""The XML request bodies S3 takes, parsed safely into plain values (MalformedXML on anything off).

    parse_location(body) -> str | None                CreateBucketConfiguration (None: no body)
    parse_complete(body) -> list[CompletedPart]       CompleteMultipartUpload
    parse_delete(body) -> DeleteRequest               Delete (Quiet, up to 1,000 objects)
    parse_tagging(body, max_tags=10) -> list[Tag]     Tagging (objects 10, buckets 50)
    check_tags(tags, max_tags=10) -> list[Tag]        the same rules for tags given otherwise
    parse_versioning(body) -> Versioning              VersioningConfiguration
    parse_cors(body) -> list[CORSRule]                CORSConfiguration
    parse_acl(body) -> AccessControlPolicy            AccessControlPolicy

Rules: no DTD, no entity, no external reference (defusedxml refuses them: MalformedXML);
elements matched by local name, with or without S3's namespace
(http://s3.amazonaws.com/doc/2006-03-01/); a wrong root, a missing required element or a
value out of its set is MalformedXML, except where S3 answers otherwise: a part number
outside 1..10,000 (InvalidArgument), parts not in ascending order (InvalidPartOrder), a bad
tag (InvalidTag), an unknown CORS method (InvalidRequest). The caller bounds the body's size.
The responses' renderers are in responses.py.
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from shoal.proto.s3.errors import S3Error

__all__ = [
    "NS",
    "AccessControlPolicy",
    "CORSRule",
    "CompletedPart",
    "DeleteRequest",
    "Grant",
    "Tag",
    "Versioning",
    "check_tags",
    "parse_acl",
    "parse_complete",
    "parse_cors",
    "parse_delete",
    "parse_location",
    "parse_tagging",
    "parse_versioning",
]

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
MAX_DELETE = 1000
MAX_PARTS = 10_000
PERMISSIONS = frozenset({"FULL_CONTROL", "WRITE", "WRITE_ACP", "READ", "READ_ACP"})
CORS_METHODS = frozenset({"GET", "PUT", "HEAD", "POST", "DELETE"})


def _malformed(why: str = "") -> S3Error:
    return S3Error("MalformedXML", why or None)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _root(body: bytes, name: str) -> ET.Element:
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as e:
        raise _malformed() from e
    if _local(root.tag) != name:
        raise _malformed(f"expected <{name}>, found <{_local(root.tag)}>")
    return root


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if _local(c.tag) == name]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _text(element: ET.Element, name: str, default: str | None = None) -> str | None:
    child = _child(element, name)
    if child is None:
        return default
    return child.text or ""


def _required(element: ET.Element, name: str) -> str:
    value = _text(element, name)
    if value is None:
        raise _malformed(f"<{_local(element.tag)}> lacks <{name}>")
    return value


def parse_location(body: bytes) -> str | None:
    """The LocationConstraint of a CreateBucket body; None for no body or no constraint."""
    if not body.strip():
        return None
    root = _root(body, "CreateBucketConfiguration")
    value = _text(root, "LocationConstraint")
    return value.strip() or None if value is not None else None


@dataclass(frozen=True, slots=True)
class CompletedPart:
    part_number: int
    etag: str  # without quotes
    checksums: dict[str, str] = field(default_factory=dict)  # "crc32" -> base64, ...


def _part_number(text: str) -> int:
    try:
        number = int(text.strip())
    except ValueError:
        raise _malformed(f"PartNumber {text!r}") from None
    if not 1 <= number <= MAX_PARTS:
        raise S3Error(
            "InvalidArgument",
            "Part number must be an integer between 1 and 10000, inclusive",
            ArgumentName="partNumber",
            ArgumentValue=str(number),
        )
    return number


def parse_complete(body: bytes) -> list[CompletedPart]:
    """The parts of a CompleteMultipartUpload, checked to be in strictly ascending order."""
    root = _root(body, "CompleteMultipartUpload")
    parts = []
    for element in _children(root, "Part"):
        checksums = {}
        for child in element:
            name = _local(child.tag)
            if name.startswith("Checksum") and name != "ChecksumType":
                checksums[name.removeprefix("Checksum").lower()] = (child.text or "").strip()
        parts.append(
            CompletedPart(
                _part_number(_required(element, "PartNumber")),
                _required(element, "ETag").strip().strip('"'),
                checksums,
            )
        )
    if not parts:
        raise _malformed("CompleteMultipartUpload names no part")
    if any(a.part_number >= b.part_number for a, b in itertools.pairwise(parts)):
        raise S3Error("InvalidPartOrder")
    return parts


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    objects: list[tuple[str, str | None]]  # (key, version id)
    quiet: bool


def _bool(text: str | None, default: bool = False) -> bool:
    if text is None:
        return default
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise _malformed(f"{text!r} is not true or false")
    return value == "true"


def parse_delete(body: bytes) -> DeleteRequest:
    root = _root(body, "Delete")
    objects = []
    for element in _children(root, "Object"):
        key = _required(element, "Key")
        version = _text(element, "VersionId")
        objects.append((key, version or None))
    if not objects or len(objects) > MAX_DELETE:
        raise _malformed(f"Delete names {len(objects)} objects (1 to 1000)")
    return DeleteRequest(objects, _bool(_text(root, "Quiet")))


@dataclass(frozen=True, slots=True)
class Tag:
    key: str
    value: str


def _invalid_tag(message: str) -> S3Error:
    return S3Error("InvalidTag", message)


def parse_tagging(body: bytes, max_tags: int = 10) -> list[Tag]:
    """The TagSet of a Tagging body: at most `max_tags`, keys 1..128 and values 0..256
    characters, keys unique, none starting with "aws:"."""
    root = _root(body, "Tagging")
    tag_set = _child(root, "TagSet")
    if tag_set is None:
        raise _malformed("Tagging lacks <TagSet>")
    tags = [Tag(_required(t, "Key"), _required(t, "Value")) for t in _children(tag_set, "Tag")]
    return check_tags(tags, max_tags)


def check_tags(tags: list[Tag], max_tags: int = 10) -> list[Tag]:
    """`tags` if S3 takes them (parse_tagging's rules; x-amz-tagging's tags are held to them
    too)."""
    if len(tags) > max_tags:
        raise S3Error("BadRequest", f"Object tags cannot be greater than {max_tags}")
    seen = set()
    for tag in tags:
        if not 1 <= len(tag.key) <= 128:
            raise _invalid_tag("The TagKey you have provided is too long, max 128")
        if len(tag.value) > 256:
            raise _invalid_tag("The TagValue you have provided is too long, max 256")
        if tag.key.lower().startswith("aws:"):
            raise _invalid_tag("Your TagKey cannot be prefixed with aws:")
        if tag.key in seen:
            raise _invalid_tag("Cannot provide multiple Tags with the same key")
        seen.add(tag.key)
    return tags


@dataclass(frozen=True, slots=True)
class Versioning:
    status: str | None  # "Enabled", "Suspended", or None (left as it was)
    mfa_delete: str | None = None


def parse_versioning(body: bytes) -> Versioning:
    root = _root(body, "VersioningConfiguration")
    status = _text(root, "Status")
    mfa = _text(root, "MfaDelete")
    if status is not None and status not in ("Enabled", "Suspended"):
        raise _malformed(f"versioning Status {status!r}")
    if mfa is not None and mfa not in ("Enabled", "Disabled"):
        raise _malformed(f"MfaDelete {mfa!r}")
    return Versioning(status, mfa)


@dataclass(frozen=True, slots=True)
class CORSRule:
    allowed_methods: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    allowed_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age_seconds: int | None = None
    id: str | None = None


def parse_cors(body: bytes) -> list[CORSRule]:
    """The rules of a CORSConfiguration: 1 to 100, each with methods and origins."""
    root = _root(body, "CORSConfiguration")
    rules = []
    for element in _children(root, "CORSRule"):

        def texts(name: str, rule: ET.Element = element) -> tuple[str, ...]:
            return tuple((c.text or "").strip() for c in _children(rule, name))

        methods, origins = texts("AllowedMethod"), texts("AllowedOrigin")
        if not methods or not origins:
            raise _malformed("a CORSRule needs AllowedMethod and AllowedOrigin")
        for method in methods:
            if method not in CORS_METHODS:
                raise S3Error(
                    "InvalidRequest",
                    f"Found unsupported HTTP method in CORS config. Unsupported method is {method}",
                )
        max_age = _text(element, "MaxAgeSeconds")
        try:
            age = int(max_age) if max_age is not None else None
        except ValueError:
            raise _malformed(f"MaxAgeSeconds {max_age!r}") from None
        rules.append(
            CORSRule(
                methods,
                origins,
                texts("AllowedHeader"),
                texts("ExposeHeader"),
                age,
                _text(element, "ID"),
            )
        )
    if not 1 <= len(rules) <= 100:
        raise _malformed(f"CORSConfiguration has {len(rules)} rules (1 to 100)")
    return rules


@dataclass(frozen=True, slots=True)
class Grant:
    grantee_type: str  # "CanonicalUser", "Group" or "AmazonCustomerByEmail"
    grantee: str  # the ID, the group's URI or the e-mail address
    permission: str
    display_name: str | None = None


@dataclass(frozen=True, slots=True)
class AccessControlPolicy:
    owner_id: str
    owner_name: str | None
    grants: list[Grant]


_GRANTEE_FIELD = {"CanonicalUser": "ID", "Group": "URI", "AmazonCustomerByEmail": "EmailAddress"}


def parse_acl(body: bytes) -> AccessControlPolicy:
    root = _root(body, "AccessControlPolicy")
    owner = _child(root, "Owner")
    if owner is None:
        raise _malformed("AccessControlPolicy lacks <Owner>")
    grants = []
    acl = _child(root, "AccessControlList")
    for element in _children(acl, "Grant") if acl is not None else []:
        grantee = _child(element, "Grantee")
        if grantee is None:
            raise _malformed("a Grant lacks <Grantee>")
        kind = grantee.get(f"{{{XSI}}}type") or grantee.get("type") or ""
        if kind not in _GRANTEE_FIELD:
            raise _malformed(f"Grantee type {kind!r}")
        permission = _required(element, "Permission")
        if permission not in PERMISSIONS:
            raise _malformed(f"Permission {permission!r}")
        grants.append(
            Grant(
                kind,
                _required(grantee, _GRANTEE_FIELD[kind]).strip(),
                permission,
                _text(grantee, "DisplayName"),
            )
        )
    return AccessControlPolicy(_required(owner, "ID"), _text(owner, "DisplayName"), grants)
