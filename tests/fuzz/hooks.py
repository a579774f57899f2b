"""Schemathesis hooks for tests/api/fuzz.rs (loaded through SCHEMATHESIS_HOOKS).

One check, `tollgate_server_failure`: what the server gets wrong whatever the request. A 5xx, a reply
that is not a JSON GraphQL response (empty, truncated), or an error the server labels INTERNAL (its
500 inside a 200, see src/graphql/mod.rs `with_codes`). A refusal (BAD_USER_INPUT, FORBIDDEN,
NOT_FOUND, ...) is a correct answer to a fuzzed request and passes, unlike schemathesis' own
`not_a_server_error`, which takes every resolver error for the server's.
Connection errors and timeouts are reported by schemathesis itself as errors, and fail the run too.
"""

import json

import schemathesis
from hypothesis import strategies as st
from schemathesis.graphql import nodes

# The contract's Decimal (src/graphql/scalars.rs): a string `[+-]digits[.digits]`, or a JSON integer.
# Plain decimals of every size (past rust_decimal's 28 digits too), the edges of its range, integers
# past i64, and strings that are almost decimals.
_EDGES = [
    "0", "-0", "0.0000000000000000000000000001", "79228162514264337593543950335",
    "-79228162514264337593543950335", "79228162514264337593543950336", "922337203685477.5807",
    "922337203685477.5808", "9223372036854775807", "1e3", " 1 ", "1.", ".5", "+1", "--1", "NaN", "",
]
_DECIMAL = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: format(d, "f")).map(nodes.String),
    st.integers(min_value=-(10**30), max_value=10**30).map(str).map(nodes.String),
    st.integers(min_value=-(2**70), max_value=2**70).map(nodes.Int),
    st.sampled_from(_EDGES).map(nodes.String),
    st.text(max_size=12).map(nodes.String),
)
schemathesis.graphql.scalar("Decimal", _DECIMAL)


def _errors(payload):
    items = payload if isinstance(payload, list) else [payload]
    for item in items:
        if not isinstance(item, dict):
            raise AssertionError(f"a GraphQL response is a JSON object, got {type(item).__name__}")
        for error in item.get("errors") or []:
            yield error


@schemathesis.check
def tollgate_server_failure(ctx, response, case):
    """5xx, an empty or non-JSON reply, or an INTERNAL GraphQL error."""
    status = response.status_code
    body = response.content or b""
    if status >= 500:
        raise AssertionError(f"HTTP {status}: {body[:500]!r}")
    if not body.strip():
        raise AssertionError(f"HTTP {status} with an empty body")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise AssertionError(f"HTTP {status}, not JSON ({exc}): {body[:500]!r}") from None
    internal = [
        e
        for e in _errors(payload)
        if isinstance(e, dict) and (e.get("extensions") or {}).get("code") == "INTERNAL"
    ]
    if internal:
        raise AssertionError(f"INTERNAL error(s): {json.dumps(internal)[:1000]}")
