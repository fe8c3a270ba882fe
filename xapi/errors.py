"""XenAPI errors: a code from the model's error list and its string parameters."""

from __future__ import annotations


class ApiError(Exception):
    """A failure the client receives as ``[code, *params]``."""

    def __init__(self, code: str, *params: object):
        self.code = code
        self.params = [str(p) for p in params]
        super().__init__(code, *self.params)

    @property
    def description(self) -> list[str]:
        return [self.code, *self.params]

    def __str__(self) -> str:
        return f"{self.code}{self.params}"


def internal_error(message: str) -> ApiError:
    return ApiError("INTERNAL_ERROR", message)


def handle_invalid(cls: str, ref: str) -> ApiError:
    return ApiError("HANDLE_INVALID", cls, ref)
