"""PII and secret pattern detectors: pure, precompiled, bounded.

Each detector yields `Span`s (code-point offsets into the text, end exclusive) for
one kind of data. They feed redaction (`[REDACTED:<LABEL>]`) and cheap triage and run
on every request's text and every streamed window, so:

- patterns are precompiled with `re.ASCII` (`\\d` is 0-9, `\\w` is [A-Za-z0-9_]);
- every pattern but the PEM block is bounded (see MAX_SPAN_CHARS), so scans stay
  linear and a stream scanner knows how much overlap to keep;
- a pattern opens with one plain character (class) where it can, so `re` skips to
  candidate positions; "not glued to the left" is then a lookbehind over two chars;
- a rule may name needles (lower case), one of which must occur in the lower-cased
  text before its regex runs at all: text without "@" costs email one substring test;
- checksums and number rules come from well-kept libraries (python-stdnum: Luhn,
  IBAN country formats and mod-97, US SSN issuing rules; phonenumbers: possible
  lengths per country for +international numbers; `ipaddress` for IP octets) and
  run only on regex candidates. Measured (1 KB prompt, the pii detectors, best of
  7): text without candidates 45 us either way; one +international phone number
  62 -> 85 us; six PII items 106 -> 163 us against the former home-made checks.
  Pass-through requests never scan; a guarded request pays ~5-15 us per candidate,
  a few percent of its ~340 us, for country-exact validation: the libraries stay.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as stdnum_ssn

MAX_SPAN_CHARS = 1024
"""Upper bound on the text one match depends on, for every pattern except PEM
private-key blocks: the match itself, context words such as `password:` or `Tel:`
included, plus the few characters of look-around either side (patterns stay 13 under
it). A stream scanner that never releases the last MAX_SPAN_CHARS characters of its
buffer, nor any part of a span that reaches into them, redacts what a whole-text scan
would. A PEM block runs from BEGIN to END (up to 32 KB); before its END arrives it
matches BEGIN plus the key lines so far, up to the end of the buffer, so the same
rule holds it back. Tokens longer than the bound (very long JWTs or bearer tokens)
are redacted for their first thousand characters, not to their end."""


@dataclass(frozen=True, slots=True, order=True)
class Span:
    start: int
    end: int
    label: str


class Detector(Protocol):
    @property
    def label(self) -> str: ...

    def find(self, text: str) -> Iterator[Span]: ...


# A check sees a regex candidate and returns the (start, end) to report, or None.
Check = Callable[[re.Match[str]], "tuple[int, int] | None"]


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: re.Pattern[str]
    check: Check
    needles: tuple[str, ...] = ()  # lower case; none of them in the text: skip


@dataclass(frozen=True, slots=True)
class PatternDetector:
    """Regex rules filtered by checks. `find` yields spans rule by rule; spans may
    overlap (find_spans sorts and merges them)."""

    name: str
    label: str
    rules: tuple[Rule, ...]

    def find(self, text: str) -> Iterator[Span]:
        lowered: str | None = None
        for rule in self.rules:
            if rule.needles:
                lowered = text.lower() if lowered is None else lowered
                if not any(n in lowered for n in rule.needles):
                    continue
            search, pos = rule.pattern.search, 0
            while (m := search(text, pos)) is not None:
                hit = rule.check(m)
                if hit is not None and hit[0] < hit[1]:
                    yield Span(hit[0], hit[1], self.label)
                    pos = max(m.end(), m.start() + 1)
                else:
                    # A rejected candidate consumes nothing: in "2024 4111 1111 1111
                    # 1111" the first four groups fail Luhn, the last four are a card.
                    pos = m.start() + 1


def _compile(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII | re.VERBOSE | flags)


def _whole(valid: Callable[[str], bool] | None = None) -> Check:
    if valid is None:
        return lambda m: m.span()
    return lambda m: m.span() if valid(m.group()) else None


def _value(valid: Callable[[str], bool], *groups: str) -> Check:
    """Report the first participating named group: a value after its context word."""

    def check(m: re.Match[str]) -> tuple[int, int] | None:
        for g in groups:
            if m.start(g) >= 0:
                return m.span(g) if valid(m.group(g)) else None
        return None

    return check


def _digits(s: str) -> str:
    return "".join(c for c in s if "0" <= c <= "9")


_SP = " \u00a0\u202f"  # spaces between digit groups: plain, no-break, narrow no-break
_NOT_AFTER = r"(?!\w|[.,:/\-]\d)"  # a number that does not run on

# --- email -------------------------------------------------------------------------
# Letters: ASCII plus Latin-1 Supplement and Latin Extended-A/B (josé@, müller@), so
# CJK text glued to an ASCII address is not swallowed into the local part.
_EL = "A-Za-z0-9\u00c0-\u024f"
_EMAIL = _compile(
    rf"""
    [{_EL}_%+\-](?<![{_EL}_%+\-].)[{_EL}._%+\-]{{0,63}}     # local part
    @
    (?:[{_EL}](?:[{_EL}\-]{{0,61}}[{_EL}])?\.){{1,8}}      # domain labels
    (?:[A-Za-z]{{2,24}}|xn--[A-Za-z0-9\-]{{1,59}})         # TLD
    (?![{_EL}_\-])
    """
)


def _email_ok(s: str) -> bool:
    return len(s) <= 254 and ".." not in s


# --- phone -------------------------------------------------------------------------
_NOT_BEFORE_NUM = r"\w+$\u20ac\u00a3\u00a5\#./\-"  # chars that make digits a non-phone
_PHONE_INTL = _compile(
    rf"""
    \+(?<![{_NOT_BEFORE_NUM}]\+)[1-9]\d{{0,2}}
    (?:[{_SP}.\-]?\(?\d{{1,5}}+\)?){{1,6}}
    {_NOT_AFTER}
    """
)
_PHONE_NANP = _compile(
    rf"""
    (?=[(1-9])(?<![{_NOT_BEFORE_NUM}])(?<![\d+][ ])
    (?:1[ .\-]?)?
    (?: \([2-9]\d\d\)[ ]?[2-9]\d\d[ .\-]\d{{4}}
      | [2-9]\d\d(?P<s>[.\-])[2-9]\d\d(?P=s)\d{{4}}
      | [2-9]\d\d[ ][2-9]\d\d[ ]\d{{4}}(?![ ]\d)
    )
    {_NOT_AFTER}
    """
)
# Other national formats only right after a word that says "phone".
_PHONE_WORDS = ("phone", "tel", "mobile", "cell", "fax", "whatsapp", "call")
_PHONE_KW = _compile(
    rf"""
    (?=[PpTtMmCcFfWw])\b
    (?i:phone|telephone|tel|mobile|cell|fax|whatsapp|call[ ](?:me[ ])?(?:at|on))
    (?:[ ]?(?i:number|no\.?|nr\.?|\#))?
    [ \t]{{0,3}}[:=]?[ \t]{{0,3}}
    (?P<v>\(?\d(?:[{_SP}.\-/]?\(?\d\)?){{6,16}})
    {_NOT_AFTER}
    """
)


_POSSIBLE = phonenumbers.ValidationResult.IS_POSSIBLE


def _intl_ok(s: str) -> bool:
    """A length the number's country can have (E.164 and its national plan)."""
    try:
        number = phonenumbers.parse(s)
    except phonenumbers.NumberParseException:
        return False
    # Not IS_POSSIBLE_LOCAL_ONLY: "+1 234 5678" lacks the area code a dialled +1 needs.
    return phonenumbers.is_possible_number_with_reason(number) == _POSSIBLE


def _kw_phone_ok(s: str) -> bool:
    return 7 <= len(_digits(s)) <= 15


# --- credit card -------------------------------------------------------------------
_CARD = _compile(
    rf"""
    \d(?<![\w+\-.,/]\d)
    (?: \d{{12,18}}
      | \d{{3}}(?P<s>[{_SP}\-])\d{{4}}(?P=s)\d{{4}}(?P=s)\d{{4}}(?:(?P=s)\d{{1,3}})?
      | \d{{3}}(?P<a>[{_SP}\-])\d{{6}}(?P=a)\d{{4,5}}
    )
    (?!\w|[\-.,/]\d)
    """
)


def _card_ok(s: str) -> bool:
    digits = _digits(s)
    # Issuer ranges 2-6 (Mastercard, Amex/Diners/JCB, Visa, Mastercard/Maestro,
    # Discover/UnionPay) halve Luhn's 1-in-10 false positives on other numbers.
    return "2" <= digits[0] <= "6" and luhn.is_valid(digits)


# --- IBAN --------------------------------------------------------------------------
# Lengths from the SWIFT IBAN registry; other country codes are not IBANs. IBANs are
# written in capitals (ISO 13616), which also keeps the scan off lower-case prose.
_IBAN_TABLE = """
    AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22
    DJ27 DK18 DO28 EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HN28
    HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25
    MC27 MD24 ME22 MK19 MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 PL28 PS29 PT25 QA29
    RO24 RS22 RU33 SA24 SC31 SD18 SE24 SI19 SK24 SM27 SO23 ST25 SV28 TL23 TN24 TR26 UA29
    VA22 VG24 XK20 YE30
"""
IBAN_LENGTHS: dict[str, int] = {entry[:2]: int(entry[2:]) for entry in _IBAN_TABLE.split()}
_IBAN = _compile(
    rf"""
    [A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d\d
    (?:[{_SP}]?[A-Z0-9]{{4}}){{2,7}}(?:[{_SP}]?[A-Z0-9]{{1,3}})?
    (?![A-Za-z0-9])
    """
)


def _iban_check(m: re.Match[str]) -> tuple[int, int] | None:
    text, start = m.string, m.start()
    need = IBAN_LENGTHS.get(text[start : start + 2])
    if need is None:
        return None
    # The regex may run on into a following group ("... 3201 2024"): cut at the
    # country's length, but only where a group ends.
    count, end = 0, start
    while end < m.end() and count < need:
        count += text[end] not in _SP
        end += 1
    if count < need or (end < m.end() and text[end] not in _SP):
        return None
    compact = "".join(c for c in text[start:end] if c not in _SP)
    return (start, end) if stdnum_iban.is_valid(compact) else None


# --- US SSN ------------------------------------------------------------------------
_SSN = _compile(
    rf"""
    \d(?<![\w\-.,/]\d)\d\d(?P<s>[{_SP}\-])\d\d(?P=s)\d{{4}}
    (?!\w|[\-.,/]\d|[{_SP}]\d)
    """
)
# Nine bare digits are an SSN only right after the words that say so.
_SSN_KW = _compile(
    r"""
    [Ss](?<![A-Za-z0-9_][Ss])
    (?i:sn|ocial[ ]security(?:[ ](?:number|no\.?|\#))?)[ \t]{0,3}[:\#]?[ \t]{0,3}
    (?P<v>\d{9})
    (?!\w|[\-.,/]\d)
    """
)


def ssn_ok(s: str) -> bool:
    """Issuable: not area 000, 666 or 900-999, group 00, serial 0000, nor a number
    known to be published (python-stdnum's rules)."""
    return stdnum_ssn.is_valid(_digits(s))


# --- IP addresses ------------------------------------------------------------------
# Four dotted numbers that parse as IPv4 are reported even when they are a version
# string (1.2.3.4): no context tells them apart. A "v" prefix or a fifth component
# (1.2.3.4.5) rules them out.
_IPV4 = _compile(r"\d(?<![\w.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\w|\.\d)")
# IPv6 has a colon within its first five characters.
_IPV6 = _compile(
    r"""
    [0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])[0-9A-Fa-f]{0,3}:[0-9A-Fa-f:.]{1,43}(?<!\.)
    (?![\w:])
    """
)


def _ipv4_ok(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)  # octets 0-255, no leading zeros
    except ValueError:
        return False
    return True


def _ipv6_check(m: re.Match[str]) -> tuple[int, int] | None:
    s, (start, end) = m.group(), m.span()
    if s.endswith(":") and not s.endswith("::"):  # "at 2001:db8::1: it" ends a clause
        s, end = s[:-1], end - 1
    if s.count(":") < 2:
        return None
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return None
    # A compressed form needs one full 4-digit group: real addresses have one (2001:,
    # fe80:, ffff:), code like a[1::2] or x::y has none.
    if "::" in s and not any(len(g) == 4 for g in re.split(r"[:.]", s)):
        return None
    return start, end


# --- secrets -----------------------------------------------------------------------
_TOKENS = _compile(
    r"""
    (?=[Agxsre])(?<![\w\-])
    (?: (?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![\w\-])   # AWS access key id
      | AIza[0-9A-Za-z_\-]{35}(?![\w\-])                             # Google API key
      | gh[pousr]_[A-Za-z0-9]{36,251}                                # GitHub tokens
      | github_pat_[A-Za-z0-9_]{22,247}
      | xox[abposr]-[A-Za-z0-9\-]{10,250}                            # Slack
      | (?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,247}                  # Stripe
      | eyJ[A-Za-z0-9_\-]{5,200}\.eyJ[A-Za-z0-9_.\-]{5,800}(?<!\.)  # JWT (and JWE)
      | (?P<sk>sk-[A-Za-z0-9_\-]{20,200})                            # OpenAI, Anthropic
    )
    """
)
_TOKEN_NEEDLES = ("akia", "asia", "abia", "acca", "a3t", "aiza", "gh", "github_pat_", "xox")
_TOKEN_NEEDLES += ("_live_", "_test_", "eyj", "sk-")
_PEM = _compile(
    r"-----BEGIN[ ](?P<kind>(?:[A-Z0-9]{1,16}[ ]){0,4})PRIVATE[ ]KEY(?P<blk>(?:[ ]BLOCK)?)-----"
)
_PEM_MAX_CHARS = 32_768
# Without an END line: the base64 and header lines that follow the BEGIN line.
_PEM_BODY = _compile(r"(?:\r?\n(?:[A-Za-z0-9+/=]{1,100}|[\w\-]+:[ ][^\r\n]*)?(?![^\r\n]))*")
_SECRET_WORDS = r"""
    (?:api|access|secret|private|client|auth|signing|encryption|master)[_\-]?key
  | apikey | (?:api|client|app)[_\-]?secret | secret(?:[_\-]?access[_\-]?key)?
  | (?:access|auth|refresh|bearer|session|api|id)[_\-]?token | token
  | passw(?:or)?d | passphrase
"""
_ASSIGN = _compile(
    rf"""
    (?=[AaSsPpCcEeMmTtRrBbIi])(?<![A-Za-z0-9])(?i:{_SECRET_WORDS})(?![A-Za-z0-9])
    ["']?(?:[ ]is)?[ \t]{{0,3}}(?::=|=>|[:=])[ \t]{{0,3}}
    (?: "(?P<dq>[^"\r\n]{{4,256}})
      | '(?P<sq>[^'\r\n]{{4,256}})
      | (?P<bare>[^\s"'`,;()\[\]{{}}<>]{{6,256}})(?<!\.)
    )
    """
)
_AUTH = _compile(
    r"""
    (?=[BbT])(?<![A-Za-z0-9])(?:(?i:bearer)|Basic|Token)[ \t]{1,3}
    (?P<v>[A-Za-z0-9\-._~+/]{16,1000}={0,2})(?<!\.)
    """
)
# The password in scheme://user:password@host (database URLs, .env lines).
_URL_PASSWORD = _compile(
    r"""
    [A-Za-z](?<![A-Za-z0-9+.\-][A-Za-z])[A-Za-z0-9+.\-]{1,20}://
    [^\s:/@]{0,64}:(?P<v>[^\s/@]{1,128})@
    """
)
_PLACEHOLDER = _compile(
    r"""
      [<\[{(] | \$[{(] | %\( | \$[A-Za-z_]\w*$ | %\w+%$    # <x> ${X} $(x) %(x)s $X %X%
    | (?i:your)[\W_]                                       # your-api-key, YOUR_TOKEN
    | [A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$                     # settings.API_KEY, os.environ
    | [A-Za-z]+(?:_[A-Za-z]+)+$                            # api_key=api_key, OPENAI_API_KEY
    | (?i:null|none|nil|true|false|undefined|str|string|bytes|optional|required
          |redacted|placeholder|secret|password|token)$
    | (.)\1*$                                              # ********, xxxxxx
    """
)


def _pem_check(m: re.Match[str]) -> tuple[int, int]:
    text = m.string
    end_line = f"-----END {m['kind']}PRIVATE KEY{m['blk']}-----"
    # An END belongs to this BEGIN only if no other BEGIN comes first (which keeps a
    # text full of BEGIN lines linear) and it is within _PEM_MAX_CHARS (keys are a
    # few KB; an END pages away does not make the prose between them a key).
    limit = m.end() + _PEM_MAX_CHARS
    stop = text.find("-----BEGIN ", m.end(), limit)
    found = text.find(end_line, m.end(), limit if stop < 0 else stop)
    if found >= 0:
        return m.start(), found + len(end_line)
    body = _PEM_BODY.match(text, m.end())
    return m.start(), body.end() if body else m.end()


def _mixed(s: str) -> bool:
    """Two of lower/upper/digit: random tokens have them, prose and NAMES don't."""
    kinds = (
        any("a" <= c <= "z" for c in s),
        any("A" <= c <= "Z" for c in s),
        any("0" <= c <= "9" for c in s),
    )
    return sum(kinds) >= 2


def _token_check(m: re.Match[str]) -> tuple[int, int] | None:
    sk = m.group("sk")
    if sk is not None and not (_mixed(sk[3:]) and any(c.isdigit() for c in sk)):
        return None  # "sk-the-quick-brown-fox-jumps" is prose
    return m.span()


def _assigned_ok(s: str) -> bool:
    return _PLACEHOLDER.match(s.strip()) is None


def _auth_ok(s: str) -> bool:
    return _mixed(s) and _PLACEHOLDER.match(s) is None


# --- registry ----------------------------------------------------------------------
DETECTORS: dict[str, Detector] = {
    d.name: d
    for d in (
        PatternDetector("email", "EMAIL", (Rule(_EMAIL, _whole(_email_ok), ("@",)),)),
        PatternDetector(
            "phone",
            "PHONE",
            (
                Rule(_PHONE_INTL, _whole(_intl_ok), ("+",)),
                Rule(_PHONE_NANP, _whole()),
                Rule(_PHONE_KW, _value(_kw_phone_ok, "v"), _PHONE_WORDS),
            ),
        ),
        PatternDetector("credit_card", "CREDIT_CARD", (Rule(_CARD, _whole(_card_ok)),)),
        PatternDetector("iban", "IBAN", (Rule(_IBAN, _iban_check),)),
        PatternDetector(
            "us_ssn",
            "US_SSN",
            (
                Rule(_SSN, _whole(ssn_ok)),
                Rule(_SSN_KW, _value(ssn_ok, "v"), ("ssn", "social security")),
            ),
        ),
        PatternDetector(
            "ip_address",
            "IP_ADDRESS",
            (Rule(_IPV4, _whole(_ipv4_ok), (".",)), Rule(_IPV6, _ipv6_check, (":",))),
        ),
        PatternDetector(
            "secret",
            "SECRET",
            (
                Rule(_PEM, _pem_check, ("-----begin ",)),
                Rule(_TOKENS, _token_check, _TOKEN_NEEDLES),
                Rule(
                    _ASSIGN,
                    _value(_assigned_ok, "dq", "sq", "bare"),
                    ("key", "secret", "token", "passw", "passphrase"),
                ),
                Rule(_AUTH, _value(_auth_ok, "v"), ("bearer", "basic", "token")),
                Rule(_URL_PASSWORD, _value(_assigned_ok, "v"), ("://",)),
            ),
        ),
    )
}


def _resolve(spans: Iterable[Span]) -> list[Span]:
    """Sort and merge overlapping spans. A cluster of overlapping spans becomes one
    span covering their union (nothing any detector matched stays visible), labelled
    by its longest member, the earliest on a tie. Touching spans stay apart."""
    out: list[Span] = []
    start = end = 0
    best: Span | None = None
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if s.start >= s.end:
            continue
        if best is not None and s.start < end:
            end = max(end, s.end)
            if s.end - s.start > best.end - best.start:
                best = s
            continue
        if best is not None:
            out.append(Span(start, end, best.label))
        start, end, best = s.start, s.end, s
    if best is not None:
        out.append(Span(start, end, best.label))
    return out


def find_spans(text: str, names: Iterable[str]) -> list[Span]:
    """All matches of the named detectors in `text`, sorted, overlaps merged (the
    longest match names the merged span, the earliest on a tie). A plain string is
    taken as one name. An unknown name raises KeyError before any scanning."""
    if isinstance(names, str):
        names = (names,)
    detectors = []
    for name in dict.fromkeys(names):
        if name not in DETECTORS:
            raise KeyError(f"unknown detector {name!r} (known: {', '.join(DETECTORS)})")
        detectors.append(DETECTORS[name])
    return _resolve(span for d in detectors for span in d.find(text))


def redact(text: str, spans: Sequence[Span]) -> str:
    """Replace each span with `[REDACTED:<LABEL>]`. Spans may be unsorted or overlap
    (they are merged as in find_spans); a span outside the text raises ValueError."""
    parts: list[str] = []
    pos = 0
    for s in _resolve(spans):
        if s.start < 0 or s.end > len(text):
            raise ValueError(f"span {s} lies outside a text of length {len(text)}")
        parts.append(text[pos : s.start])
        parts.append(f"[REDACTED:{s.label}]")
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts)
