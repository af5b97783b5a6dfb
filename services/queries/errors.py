"""What the query layer refuses: a parameter that does not fit, or nothing to show."""

from __future__ import annotations


class QueryError(ValueError):
    """A query's parameters do not fit (422), or name something that does not exist (404)."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: int = 422,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status
        self.code = code or ("not_found" if status == 404 else "invalid_input")
