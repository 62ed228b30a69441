"""Settings of the API process (`DIFFII_*` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from services.common.settings import CommonSettings
from services.common.signing import load_or_create_secret


class ApiSettings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_base_url: str | None = Field(
        None,
        description="URL clients reach the API at (signed local download links); default http://host:port",
    )
    max_upload_bytes: int | None = Field(
        None, ge=1, description="largest upload over HTTP; default: the max_archive_bytes dataset limit"
    )
    max_json_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024**2,
        description="largest JSON request body; a larger one is refused (413) before it is parsed",
    )
    presign_ttl: int = Field(300, ge=10, le=7 * 24 * 3600, description="seconds a download link stays valid")
    signing_secret: SecretStr | None = Field(
        None, description="HMAC secret of local-storage download links; default: a file under DIFFII_HOME"
    )
    supervisor_state: Path | None = Field(
        None, description="set by `diffii up`: its children's state file, reported by /readyz"
    )
    readiness_timeout: float = Field(3.0, gt=0, le=60, description="seconds per /readyz dependency check")

    @property
    def public_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def signing_secret_value(self) -> str:
        if self.signing_secret is not None:
            return self.signing_secret.get_secret_value()
        return load_or_create_secret(self.home / "signing.key")

    @property
    def upload_cap(self) -> int:
        """Bytes an upload may have: its own setting, else the archive limit every reader applies."""
        if self.max_upload_bytes is not None:
            return self.max_upload_bytes
        return self.make_dataset_limits().max_archive_bytes
