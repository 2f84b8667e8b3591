"""The sans-IO core of the S3 gateway: values in, values (or S3Error) out; no sockets, no loop.

errors (S3Error and the codes), sigv4 (header and presigned SigV4), chunked (aws-chunked
bodies), checksums (x-amz-checksum-*, Content-MD5), sigv2, postpolicy (browser POST), xml
(request bodies in), responses (response bodies out), conditions (If-* and Range), names
(buckets, keys, metadata, copy sources), cors (preflight and CORS headers), acl (canned ACLs,
grant headers, who may), bucketpolicy (allow and deny on principal, action, resource). Each
module's docstring gives its interface and the rules it keeps.
"""
