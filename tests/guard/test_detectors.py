"""PII and secret detectors: true positives, near misses, overlaps, redaction, scale.

Fake credentials are assembled from pieces so this file never holds a literal token
that a secret scanner would flag.
"""

from __future__ import annotations

import base64
import json
import random
import re._parser as sre_parse  # only to measure pattern widths for MAX_SPAN_CHARS

import pytest

from proxy.guard.detectors import DETECTORS, MAX_SPAN_CHARS, Span, find_spans, redact


def found(text: str, name: str) -> list[str]:
    return [text[s.start : s.end] for s in find_spans(text, [name])]


def b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


JWT = ".".join(
    [
        b64url({"alg": "HS256", "typ": "JWT"}),
        b64url({"sub": "1234567890", "name": "John Doe", "iat": 1516239022}),
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    ]
)
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"
OPENAI_KEY = "sk-" + "abcDEF1234567890" * 3
OPENAI_PROJ = "sk-proj-" + "Ab3_x9Yz-" * 17
GITHUB_PAT = "ghp_" + "a1B2" * 9
GITHUB_FINE = "github_pat_" + "11ABCDEFG0" * 8
SLACK = "xoxb-" + "123456789012-1234567890123-" + "AbCdEfGhIjKlMnOp"
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
STRIPE = "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"
STRIPE_RESTRICTED = "rk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)


def test_registry_names_and_labels() -> None:
    labels = {name: d.label for name, d in DETECTORS.items()}
    assert labels == {
        "email": "EMAIL",
        "phone": "PHONE",
        "credit_card": "CREDIT_CARD",
        "iban": "IBAN",
        "us_ssn": "US_SSN",
        "ip_address": "IP_ADDRESS",
        "secret": "SECRET",
    }
    text = "mail bob@example.com"
    assert list(DETECTORS["email"].find(text)) == [Span(5, 20, "EMAIL")]


# --- email ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to bob@example.com today", "bob@example.com"),
        ("Mail bob.smith+tag@mail.example.co.uk.", "bob.smith+tag@mail.example.co.uk"),
        ("<ALICE_99@Example.ORG>", "ALICE_99@Example.ORG"),
        ("mailto:ops-team@corp.io?subject=hi", "ops-team@corp.io"),
        ("josé.müller@exemple.fr", "josé.müller@exemple.fr"),
        ("请联系bob@example.com", "bob@example.com"),
        ("punycode user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
    ],
)
def test_email_found(text: str, expected: str) -> None:
    assert found(text, "email") == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "ping @handle on chat",
        "user@localhost",
        "a@b.c",
        "bob at example dot com",
        "decorator @app.route('/x')",
        "email me at bob@example",
    ],
)
def test_email_near_misses(text: str) -> None:
    assert found(text, "email") == []


# --- phone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Call +1 (415) 555-2671 now", "+1 (415) 555-2671"),
        ("London office +44 20 7946 0958.", "+44 20 7946 0958"),
        ("Paris: +33 1 42 68 53 00", "+33 1 42 68 53 00"),
        ("mobile +91-98765-43210", "+91-98765-43210"),
        ("compact +442079460958", "+442079460958"),
        ("US (415) 555-2671", "(415) 555-2671"),
        ("reach me at 415-555-2671, thanks", "415-555-2671"),
        ("dial 415.555.2671", "415.555.2671"),
        ("dial 415 555 2671", "415 555 2671"),
        ("toll free 1-800-555-0199", "1-800-555-0199"),
        ("Tel: 020 7946 0958", "020 7946 0958"),
        ("phone number: 06 12 34 56 78", "06 12 34 56 78"),
        ("call me at 0171 1234567", "0171 1234567"),
        ("support +44 20 7946 0958 24/7", "+44 20 7946 0958"),
    ],
)
def test_phone_found(text: str, expected: str) -> None:
    assert found(text, "phone") == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1111",
        "card 4111111111111111",
        "IBAN DE89 3704 0044 0532 0130 00",
        "on 2024-01-15 at 10:30",
        "born in 1999, moved in 2004",
        "price $1,234,567.89 or €4,150.00",
        "placeholder 123-456-7890",  # no area code starts with 1
        "Order #415-555-2671 shipped",
        "ISBN 978-3-16-148410-0",
        "score +15% and +12 points",
        "build 10.2.3 of 2024",
        "ip 192.168.1.1",
        "ssn 536-22-1234",
        "415-555-2671-9 is a part number",
        "a long run 41555526710000",
        "the cell at row 12 column 3",
        "dial +1 234 5678",  # too short for +1 (phonenumbers' per-country lengths)
        "dial +44 20 79",  # too short for the UK
    ],
)
def test_phone_near_misses(text: str) -> None:
    assert found(text, "phone") == []


# --- credit card ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Visa 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
        ("Visa 4111-1111-1111-1111", "4111-1111-1111-1111"),
        ("paid in 2024 4111 1111 1111 1111", "4111 1111 1111 1111"),
        ("4111 1111 1111 1111 2024", "4111 1111 1111 1111"),
        ("card:4111111111111111.", "4111111111111111"),
        ("Amex 3782 822463 10005", "3782 822463 10005"),
        ("Amex 378282246310005", "378282246310005"),
        ("Mastercard 5555555555554444", "5555555555554444"),
        ("Discover 6011111111111117", "6011111111111117"),
        ("Diners 3056 930902 5904", "3056 930902 5904"),
    ],
)
def test_card_found(text: str, expected: str) -> None:
    assert found(text, "credit_card") == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "Visa 4111 1111 1111 1112",  # Luhn fails
        "order 1000000000000009",  # Luhn passes, but no card starts with 1
        "tracking 9400111899223817",  # nor with 9
        "id 12345678901234567890",  # 20 digits
        "mixed 4111 1111-1111 1111",  # inconsistent separators
        "phone +4111111111111111",
        "pi 3.4111111111111111",
        "41111 11111 11111 1",  # not a card grouping
    ],
)
def test_card_near_misses(text: str) -> None:
    assert found(text, "credit_card") == []


# --- IBAN ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX", "DE89 3704 0044 0532 0130 00"),
        ("GB82WEST12345698765432", "GB82WEST12345698765432"),
        ("FR14 2004 1010 0505 0001 3M02 606.", "FR14 2004 1010 0505 0001 3M02 606"),
        ("to NL91ABNA0417164300 please", "NL91ABNA0417164300"),
        ("Norway NO93 8601 1117 947", "NO93 8601 1117 947"),
        # The regex runs into the next group; the country length cuts it back.
        ("AT61 1904 3002 3457 3201 2024 invoice", "AT61 1904 3002 3457 3201"),
    ],
)
def test_iban_found(text: str, expected: str) -> None:
    assert found(text, "iban") == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "DE89 3704 0044 0532 0130 01",  # bad check digits
        "DE88 3704 0044 0532 0130 00",
        "DE89 3704 0044 0532 0130",  # too short for DE
        "DE89370400440532013000123",  # too long, no group boundary at 22
        "XX89 3704 0044 0532 0130 00",  # no such country
        "de89 3704 0044 0532 0130 00",  # IBANs are written in capitals
        "SKU AB12 CDEF 3456 GHIJ",
    ],
)
def test_iban_near_misses(text: str) -> None:
    assert found(text, "iban") == []


# --- US SSN --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SSN 536-22-1234.", "536-22-1234"),
        ("ssn 536 22 1234", "536 22 1234"),
        ("SSN: 536221234", "536221234"),
        ("Social Security Number #536221234", "536221234"),
    ],
)
def test_ssn_found(text: str, expected: str) -> None:
    assert found(text, "us_ssn") == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456",  # area 000
        "666-12-3456",  # area 666
        "900-12-3456",  # area 9xx
        "987-65-4321",
        "123-00-4567",  # group 00
        "123-45-0000",  # serial 0000
        "078-05-1120",  # published on a wallet insert, never a person's (python-stdnum)
        "SSN: 000123456",
        "ref 536221234",  # nine bare digits without the word
        "536-22-1234-5",
        "536-22 1234",  # mixed separators
        "1536-22-1234",
        "on 2024-01-15",
    ],
)
def test_ssn_near_misses(text: str) -> None:
    assert found(text, "us_ssn") == []


# --- IP addresses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host 192.168.1.10 is up", "192.168.1.10"),
        ("dns 8.8.8.8:53", "8.8.8.8"),
        ("net 10.0.0.0/8", "10.0.0.0"),
        ("reach it at 10.0.0.1.", "10.0.0.1"),
        ("v6 2001:db8::8a2e:370:7334 ok", "2001:db8::8a2e:370:7334"),
        ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
        ("link fe80::1ff:fe23:4567:890a%eth0", "fe80::1ff:fe23:4567:890a"),
        ("mapped ::ffff:192.0.2.128", "::ffff:192.0.2.128"),
        ("url http://[2001:db8::1]:8080/", "2001:db8::1"),
        ("the address is 2001:db8::1: use it", "2001:db8::1"),
        # Decision: a dotted quad that parses as IPv4 is reported even when it is a
        # version number; nothing in the text tells the two apart.
        ("version 1.2.3.4", "1.2.3.4"),
    ],
)
def test_ip_found(text: str, expected: str) -> None:
    assert found(text, "ip_address") == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "999.1.1.1",
        "256.0.0.1",
        "10.0.0",
        "1.2.3.4.5",  # five components: a version
        "release v1.2.3.4",
        "01.02.03.04",  # leading zeros are not IPv4
        "at 12:30:45",
        "slice a[1::2]",
        "std::vector<int>",
        "mac 00:1A:2B:3C:4D:5E",
        "loopback ::1",
        "price 1.25",
    ],
)
def test_ip_near_misses(text: str) -> None:
    assert found(text, "ip_address") == []


# --- secrets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"aws key {AWS_KEY} here", AWS_KEY),
        ("session ASIA" + "Y34FZKBOKMUTVV7A", "ASIA" + "Y34FZKBOKMUTVV7A"),
        (f"OPENAI_KEY {OPENAI_KEY}", OPENAI_KEY),
        (f"key: {OPENAI_PROJ}", OPENAI_PROJ),
        (f"token {GITHUB_PAT}", GITHUB_PAT),
        ("gho_" + "Zz9" * 12, "gho_" + "Zz9" * 12),
        ("ghs_" + "Zz9" * 12, "ghs_" + "Zz9" * 12),
        (f"pat {GITHUB_FINE}", GITHUB_FINE),
        (f"slack {SLACK}", SLACK),
        (f"maps {GOOGLE}", GOOGLE),
        (f"stripe {STRIPE}", STRIPE),
        (f"restricted {STRIPE_RESTRICTED}", STRIPE_RESTRICTED),
        (f"jwt {JWT}.", JWT),
        ("Authorization: Bearer abcDEF123456ghiJKL789.", "abcDEF123456ghiJKL789"),
        ("Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ("api_key=abc123XYZ789", "abc123XYZ789"),
        ('password: "correct horse battery"', "correct horse battery"),
        ("DB_PASSWORD=hunter22", "hunter22"),
        ('{"client_secret": "s3cr3t-v@lue"}', "s3cr3t-v@lue"),
        ("x-api-key: 0123456789abcdef", "0123456789abcdef"),
        ("The password is: hunter22.", "hunter22"),
        ("DATABASE_URL=postgres://app:s3cr3tPass@db.internal:5432/app", "s3cr3tPass"),
        ("redis://:Zx81kq@cache:6379/0", "Zx81kq"),
        (f"key follows\n{PEM}\nthanks", PEM),
    ],
)
def test_secret_found(text: str, expected: str) -> None:
    assert found(text, "secret") == [expected]


def test_secret_unterminated_pem_covers_the_key_lines() -> None:
    head = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\nAAAA=="
    text = f"{head}\nThat was my key, is it safe?"
    assert found(text, "secret") == [head]


def test_secret_pem_end_pages_away_does_not_swallow_the_prose() -> None:
    text = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n" + "Prose. " * 6_000
    text += "\n-----END PRIVATE KEY-----"
    assert found(text, "secret") == ["-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg"]


@pytest.mark.parametrize(
    "text",
    [
        "AKIA123 is too short",
        "sk-the-quick-brown-fox-jumps-over",  # prose, not a key
        "task-1234567890abcdefghijkl",
        "password: <your password>",
        "api_key = os.environ['OPENAI_API_KEY']",
        "client = OpenAI(api_key=api_key)",
        "api_key = settings.OPENAI_API_KEY",
        "password: str",
        "token: Optional[str] = None",
        "max_tokens=100000",
        "token_count: 123456",
        "password: ********",
        "password: [REDACTED:SECRET]",
        "api_key: ${OPENAI_API_KEY}",
        "password_hash: abcdef123",
        "Bearer YOUR_TOKEN_HERE",
        "the bearer of this letter is trusted",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----",
        "the secret to good bread is time",
        "postgres://app:${DB_PASSWORD}@db/app",
        "see https://example.com:8080/path?q=1",
    ],
)
def test_secret_near_misses(text: str) -> None:
    assert found(text, "secret") == []


def test_long_jwt_is_redacted_from_its_start_within_the_bound() -> None:
    long_jwt = "eyJhbGciOiJSUzI1NiJ9.eyJ" + "a1B2" * 700 + ".sig"
    (span,) = find_spans(f"t {long_jwt}", ["secret"])
    assert span.start == 2
    assert span.end - span.start <= MAX_SPAN_CHARS


# --- find_spans ----------------------------------------------------------------------


def test_find_spans_sorted_across_detectors() -> None:
    text = "mail bob@example.com, call +1 415 555 2671 from 10.0.0.1 with 4111111111111111"
    spans = find_spans(text, ["credit_card", "ip_address", "phone", "email"])
    assert [(text[s.start : s.end], s.label) for s in spans] == [
        ("bob@example.com", "EMAIL"),
        ("+1 415 555 2671", "PHONE"),
        ("10.0.0.1", "IP_ADDRESS"),
        ("4111111111111111", "CREDIT_CARD"),
    ]
    assert spans == sorted(spans)


def test_find_spans_only_named_detectors() -> None:
    text = "bob@example.com 10.0.0.1"
    assert [s.label for s in find_spans(text, ["ip_address"])] == ["IP_ADDRESS"]
    assert find_spans(text, []) == []
    assert find_spans(text, "email") == [Span(0, 15, "EMAIL")]  # a plain name works
    assert find_spans(text, ["email", "email"]) == [Span(0, 15, "EMAIL")]


def test_find_spans_unknown_name() -> None:
    with pytest.raises(KeyError, match="ssn"):
        find_spans("text", ["email", "ssn"])


def test_contained_match_is_absorbed_by_the_longer_one() -> None:
    # The card number is also the local part of an address: one EMAIL span.
    text = "x 4111111111111111@example.com y"
    assert find_spans(text, ["credit_card", "email"]) == [Span(2, 30, "EMAIL")]
    # A key assigned to api_key is found by two secret rules: one span.
    text = f'api_key="{OPENAI_KEY}"'
    assert found(text, "secret") == [OPENAI_KEY]


def test_overlaps_merge_to_the_union_labelled_by_the_longest() -> None:
    text = "0123456789abcdefghij"
    partial = [Span(0, 6, "A"), Span(4, 14, "B")]
    assert redact(text, partial) == "[REDACTED:B]efghij"
    tie = [Span(5, 9, "LATER"), Span(2, 6, "EARLIER")]
    assert redact(text, tie) == "01[REDACTED:EARLIER]9abcdefghij"
    touching = [Span(0, 2, "A"), Span(2, 4, "B")]
    assert redact(text, touching) == "[REDACTED:A][REDACTED:B]456789abcdefghij"


# --- redact --------------------------------------------------------------------------


def test_redact_exact_output() -> None:
    text = (
        "Hi, I'm bob@example.com, SSN 536-22-1234, card 4111 1111 1111 1111, "
        "IBAN GB82WEST12345698765432, server 10.1.2.3, phone (415) 555-2671, "
        f"password: hunter22 and key {AWS_KEY}."
    )
    assert redact(text, find_spans(text, DETECTORS)) == (
        "Hi, I'm [REDACTED:EMAIL], SSN [REDACTED:US_SSN], card [REDACTED:CREDIT_CARD], "
        "IBAN [REDACTED:IBAN], server [REDACTED:IP_ADDRESS], phone [REDACTED:PHONE], "
        "password: [REDACTED:SECRET] and key [REDACTED:SECRET]."
    )


def test_redact_pem_and_bearer() -> None:
    text = f"Authorization: Bearer {JWT}\n{PEM}\nend"
    assert redact(text, find_spans(text, ["secret"])) == (
        "Authorization: Bearer [REDACTED:SECRET]\n[REDACTED:SECRET]\nend"
    )


def test_redact_edge_cases() -> None:
    assert redact("nothing here", []) == "nothing here"
    assert redact("abc", [Span(0, 3, "X")]) == "[REDACTED:X]"
    assert redact("abcdef", [Span(4, 6, "B"), Span(0, 1, "A")]) == "[REDACTED:A]bcd[REDACTED:B]"
    with pytest.raises(ValueError):
        redact("abc", [Span(1, 9, "X")])


def test_redacted_text_is_stable() -> None:
    text = f"password: hunter22, bob@example.com, {GITHUB_PAT}, +44 20 7946 0958"
    once = redact(text, find_spans(text, DETECTORS))
    assert find_spans(once, DETECTORS) == []


# --- unicode -------------------------------------------------------------------------


def test_offsets_are_code_points_in_unicode_text() -> None:
    text = "Ünïcödé 😀🎉 写信给 bob@example.com 或致电 +86 138 0013 8000。卡号4111111111111111"
    spans = find_spans(text, ["email", "phone", "credit_card"])
    assert [(s.start, text[s.start : s.end]) for s in spans] == [
        (text.index("bob@"), "bob@example.com"),
        (text.index("+86"), "+86 138 0013 8000"),
        (text.index("4111"), "4111111111111111"),
    ]
    assert redact(text, spans) == (
        "Ünïcödé 😀🎉 写信给 [REDACTED:EMAIL] 或致电 [REDACTED:PHONE]。卡号[REDACTED:CREDIT_CARD]"
    )


def test_no_break_spaces_separate_digit_groups() -> None:
    phone = "+33\u00a01\u00a042\u00a068\u00a053\u00a000"
    iban = "FR14\u00a02004 1010 0505 0001 3M02 606"
    text = f"tél. {phone}, IBAN {iban}"
    assert found(text, "phone") == [phone]
    assert found(text, "iban") == [iban]


# --- bounds and scale ----------------------------------------------------------------


def test_every_pattern_fits_max_span_chars() -> None:
    # PEM blocks are the one kind of span that grows past its pattern (to END).
    too_wide = []
    for name, detector in DETECTORS.items():
        for rule in detector.rules:
            _, widest = sre_parse.parse(rule.pattern.pattern, rule.pattern.flags).getwidth()
            if widest > MAX_SPAN_CHARS - 8:  # leave room for look-around context
                too_wide.append((name, rule.pattern.pattern[:20], widest))
    assert too_wide == []


def stream_redact(text: str, names: list[str], chunk_sizes: list[int]) -> str:
    """A minimal stream scanner: it never releases the last MAX_SPAN_CHARS characters
    of its buffer, nor any part of a span that reaches into them."""
    out, buf, pos = [], "", 0
    sizes = iter(chunk_sizes)
    while True:
        n = next(sizes, 0)
        buf += text[pos : pos + n]
        pos += n
        done = pos >= len(text)
        spans = find_spans(buf, names)
        cut = len(buf) if done else max(len(buf) - MAX_SPAN_CHARS, 0)
        for s in spans:
            if s.start < cut < s.end:
                cut = s.start
        out.append(redact(buf[:cut], [s for s in spans if s.end <= cut]))
        buf = buf[cut:]
        if done:
            return "".join(out)


def test_stream_windows_redact_like_the_whole_text() -> None:
    rng = random.Random(7)
    filler = "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 30
    pieces = [
        "mail bob@example.com",
        "call +44 20 7946 0958",
        "card 4111 1111 1111 1111",
        "iban DE89 3704 0044 0532 0130 00",
        "ssn 536-22-1234",
        "host 2001:db8::8a2e:370:7334",
        f"auth Bearer {JWT}",
        PEM,
    ]
    text = "".join(f"{filler[: rng.randrange(50, 1500)]}\n{p}\n" for p in pieces * 3)
    names = list(DETECTORS)
    expected = redact(text, find_spans(text, names))
    assert expected.count("[REDACTED:") == len(pieces) * 3
    sizes = [rng.randrange(1, 80) for _ in range(len(text))]
    assert stream_redact(text, names, sizes) == expected


def test_100kb_text_is_processed() -> None:
    rng = random.Random(1)
    words = ["the", "fox", "order", "2024", "price", "$19.99", "version", "3.11", "token", "key"]
    planted = [
        "bob@example.com",
        "+1 415 555 2671",
        "4111 1111 1111 1111",
        "GB82WEST12345698765432",
        "536-22-1234",
        "192.168.0.1",
        GITHUB_PAT,
    ]
    parts: list[str] = []
    size = 0
    while size < 100_000:
        chunk = " ".join(rng.choice(words) for _ in range(40)) + f" {planted[len(parts) % 7]}. "
        parts.append(chunk)
        size += len(chunk)
    text = "".join(parts)
    spans = find_spans(text, DETECTORS)
    assert len(spans) == len(parts)
    redacted = redact(text, spans)
    assert not any(p in redacted for p in planted)


@pytest.mark.parametrize(
    "text",
    [
        "a" * 100_000,
        "@" * 100_000,
        "a@" * 50_000,
        ("a." * 40 + "@") * 1_200,
        "1" * 100_000,
        "+1" * 50_000,
        "1." * 50_000,
        ":" * 100_000,
        "f:" * 50_000,
        "4111 " * 20_000,
        "password: " * 10_000,
        "Bearer " * 14_000,
        "-----BEGIN PRIVATE KEY-----\n" * 3_500,
        ("eyJ" + "a" * 10 + ".") * 7_000,
        "".join(random.Random(3).choice("0123456789abcdef:. -") for _ in range(100_000)),
    ],
    ids=lambda t: repr(t[:12]),
)
def test_adversarial_100kb_inputs_stay_bounded(text: str) -> None:
    for span in find_spans(text, DETECTORS):
        assert span.end - span.start <= MAX_SPAN_CHARS
