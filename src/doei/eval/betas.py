"""Background thresholds β: the one parser of a β list (``doei eval --betas``, the demo, the study)."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

from doei.errors import DoeiError

DEFAULT_BETAS = "0.05:0.95:0.05"


def parse_betas(spec: str) -> list[float]:
    """``"a:b:s"`` (a to b inclusive in steps s, computed in decimal so 0.3 is float('0.3')),
    ``"x"`` or ``"x,y,..."``. Returns sorted distinct values."""
    spec = spec.strip()
    try:
        if ":" in spec:
            parts = [Decimal(s) for s in spec.split(":")]
            if len(parts) != 3:
                raise DoeiError(f"--betas {spec!r}: expected START:END:STEP")
            start, end, step = parts
            if not all(x.is_finite() for x in parts) or step <= 0 or end < start:
                raise DoeiError(f"--betas {spec!r}: expected finite START <= END and STEP > 0")
            n = int((end - start) / step) + 1
            if n > 100000:
                raise DoeiError(f"--betas {spec!r}: {n} thresholds is too many (max 100000)")
            vals = [float(start + i * step) for i in range(n)]
        else:
            vals = [float(Decimal(s)) for s in spec.split(",") if s.strip()]
    except InvalidOperation:
        raise DoeiError(f"--betas {spec!r}: not a number list (use 0.3, 0.1,0.2 or 0.05:0.95:0.05)") from None
    if not vals or any(v != v or v in (float("inf"), float("-inf")) for v in vals):
        raise DoeiError(f"--betas {spec!r}: expected finite numbers")
    bad = [v for v in vals if not 0.0 <= v <= 1.0]
    if bad:
        raise DoeiError(f"--betas {spec!r}: {bad[0]:g} is outside [0, 1] (β is a background threshold on "
                        "CAMs normalised to [0, 1])")
    return sorted(set(vals))
