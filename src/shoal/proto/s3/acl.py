"""S3's ACLs: canned ACLs and x-amz-grant-* headers into an AccessControlPolicy, and whether
a policy lets someone do something.

    from_headers(headers, owner_id, bucket_owner_id=None) -> AccessControlPolicy | None
        x-amz-acl (a canned ACL) or x-amz-grant-{read,write,read-acp,write-acp,full-control};
        None when the request sends neither (keep the current ACL, or "private" for a new one)
    canned(name, owner_id, bucket_owner_id=None) -> AccessControlPolicy
    allows(policy, who, permission) -> bool
        who: the requester's canonical id, None for an anonymous request;
        permission: READ, WRITE, READ_ACP or WRITE_ACP

Canned ACLs, as S3 defines them (the owner always holds FULL_CONTROL): private;
public-read (AllUsers READ); public-read-write (AllUsers READ and WRITE); authenticated-read
(AuthenticatedUsers READ); bucket-owner-read and bucket-owner-full-control (the bucket's owner
READ, or FULL_CONTROL, on an object); log-delivery-write (LogDelivery WRITE and READ_ACP).
Another name: InvalidArgument. Both x-amz-acl and grant headers: InvalidRequest. A grant
header is a comma-separated list of id="...", uri="..." or emailAddress="..." (InvalidArgument
otherwise). FULL_CONTROL holds every permission; the owner may always read and write the ACL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.xml import AccessControlPolicy, Grant

__all__ = [
    "ALL_USERS",
    "AUTHENTICATED_USERS",
    "CANNED",
    "LOG_DELIVERY",
    "allows",
    "canned",
    "from_headers",
]

GROUPS = "http://acs.amazonaws.com/groups/"
ALL_USERS = GROUPS + "global/AllUsers"
AUTHENTICATED_USERS = GROUPS + "global/AuthenticatedUsers"
LOG_DELIVERY = GROUPS + "s3/LogDelivery"

CANNED = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
    "log-delivery-write",
)

_GRANT_HEADERS = {
    "x-amz-grant-read": "READ",
    "x-amz-grant-write": "WRITE",
    "x-amz-grant-read-acp": "READ_ACP",
    "x-amz-grant-write-acp": "WRITE_ACP",
    "x-amz-grant-full-control": "FULL_CONTROL",
}
_GRANTEE = re.compile(r'\s*(id|uri|emailAddress)\s*=\s*"?([^",]*)"?\s*')
_KINDS = {"id": "CanonicalUser", "uri": "Group", "emailAddress": "AmazonCustomerByEmail"}


def _group(uri: str, permission: str) -> Grant:
    return Grant("Group", uri, permission)


def canned(name: str, owner_id: str, bucket_owner_id: str | None = None) -> AccessControlPolicy:
    grants = [Grant("CanonicalUser", owner_id, "FULL_CONTROL")]
    if name == "public-read":
        grants.append(_group(ALL_USERS, "READ"))
    elif name == "public-read-write":
        grants += [_group(ALL_USERS, "READ"), _group(ALL_USERS, "WRITE")]
    elif name == "authenticated-read":
        grants.append(_group(AUTHENTICATED_USERS, "READ"))
    elif name in ("bucket-owner-read", "bucket-owner-full-control"):
        if bucket_owner_id is not None and bucket_owner_id != owner_id:
            permission = "READ" if name == "bucket-owner-read" else "FULL_CONTROL"
            grants.append(Grant("CanonicalUser", bucket_owner_id, permission))
    elif name == "log-delivery-write":
        grants += [_group(LOG_DELIVERY, "WRITE"), _group(LOG_DELIVERY, "READ_ACP")]
    elif name != "private":
        raise S3Error("InvalidArgument", ArgumentName="x-amz-acl", ArgumentValue=name)
    return AccessControlPolicy(owner_id, None, grants)


def _grantees(header: str, value: str, permission: str) -> list[Grant]:
    grants = []
    for part in value.split(","):
        m = _GRANTEE.fullmatch(part)
        if not m or not m.group(2):
            raise S3Error("InvalidArgument", ArgumentName=header, ArgumentValue=value)
        grants.append(Grant(_KINDS[m.group(1)], m.group(2), permission))
    return grants


def from_headers(
    headers: Sequence[tuple[str, str]], owner_id: str, bucket_owner_id: str | None = None
) -> AccessControlPolicy | None:
    acl = [v for k, v in headers if k == "x-amz-acl"]
    grants = [(k, v) for k, v in headers if k in _GRANT_HEADERS]
    if acl and grants:
        raise S3Error(
            "InvalidRequest", "Specifying both Canned ACLs and Header Grants is not allowed"
        )
    if acl:
        return canned(acl[0].strip(), owner_id, bucket_owner_id)
    if not grants:
        return None
    listed = [g for k, v in grants for g in _grantees(k, v, _GRANT_HEADERS[k])]
    return AccessControlPolicy(owner_id, None, listed)


def allows(policy: AccessControlPolicy, who: str | None, permission: str) -> bool:
    if who is not None and who == policy.owner_id and permission in ("READ_ACP", "WRITE_ACP"):
        return True
    for grant in policy.grants:
        if grant.permission not in (permission, "FULL_CONTROL"):
            continue
        if grant.grantee_type == "Group":
            if grant.grantee == ALL_USERS:
                return True
            if grant.grantee == AUTHENTICATED_USERS and who is not None:
                return True
        elif grant.grantee_type == "CanonicalUser" and who is not None and grant.grantee == who:
            return True
    return False
