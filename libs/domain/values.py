"""Value checks shared by the aggregates: money, currencies and names (times: times.py)."""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from libs.domain.errors import InvalidInput, NegativeValue


class _Unset:
    """Marks an argument that was not given (distinct from None, which clears a field)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()

# ISO 4217 codes in circulation (funds and precious metals left out on purpose: a
# sales pipeline is priced in a currency someone can invoice in).
ISO_4217_CODES = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD
    BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK
    JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA
    MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK
    PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN
    SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST
    XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    """.split()
)

MAX_VALUE = Decimal("1000000000000000")  # 10^15 in the pipeline's currency
MAX_VALUE_DECIMALS = 4
MAX_TITLE_LENGTH = 200
MAX_NAME_LENGTH = 100
MAX_NOTE_LENGTH = 2000


def check_currency(code: Any) -> str:
    """Return the ISO 4217 code in upper case, or raise naming ``currency``."""
    if not isinstance(code, str) or code.upper() not in ISO_4217_CODES:
        raise InvalidInput(
            f"currency must be an ISO 4217 code such as EUR or USD, got {code!r}",
            field="currency",
        )
    return code.upper()


def check_money(value: Any, field: str = "value") -> Decimal:
    """Return ``value`` as a non-negative Decimal within the supported range."""
    if isinstance(value, bool):
        # bool is an int subclass, so Decimal(True) would quietly become 1.
        raise InvalidInput(f"{field} must be a decimal number, got {value!r}", field=field)
    if isinstance(value, float):
        # Floats cannot hold most decimal amounts exactly; go through their repr.
        value = repr(value)
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise InvalidInput(
            f"{field} must be a decimal number, got {value!r}", field=field
        ) from None
    if not amount.is_finite():
        raise InvalidInput(f"{field} must be a finite number", field=field)
    if amount < 0:
        raise NegativeValue(f"{field} must not be negative, got {amount}", field=field)
    if amount > MAX_VALUE:
        raise InvalidInput(f"{field} must not exceed {MAX_VALUE}", field=field)
    exponent = amount.as_tuple().exponent
    if amount == 0:
        amount = Decimal(0)  # no "-0"
    elif isinstance(exponent, int) and exponent > 0:
        amount = amount.quantize(Decimal(1))  # "1E+3" is stored and shown as "1000"
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_VALUE_DECIMALS:
        raise InvalidInput(
            f"{field} has more than {MAX_VALUE_DECIMALS} decimal places", field=field
        )
    return amount


def format_money(amount: Decimal) -> str:
    """Canonical text of an amount: at least two decimals, no trailing zeros beyond them."""
    text = format(amount.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def check_text(value: Any, field: str, *, max_length: int, required: bool = True) -> str:
    """Return ``value`` stripped, refusing empty (when required) or over-long text."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field)
    text = value.strip()
    if required and not text:
        raise InvalidInput(f"{field} must not be empty", field=field)
    if len(text) > max_length:
        raise InvalidInput(f"{field} must be at most {max_length} characters", field=field)
    # Control characters (NUL among them) and lone surrogates cannot be stored as text.
    if any(
        (unicodedata.category(ch) == "Cc" and ch not in "\n\t") or "\ud800" <= ch <= "\udfff"
        for ch in text
    ):
        raise InvalidInput(f"{field} must not contain control characters", field=field)
    return text


_SLUG_RE = re.compile(r"[^a-z0-9]+")


def slugify(name: str) -> str:
    """A lower-case, dash-separated id made from a display name."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _SLUG_RE.sub("-", ascii_name.lower()).strip("-")
    return slug or "stage"
