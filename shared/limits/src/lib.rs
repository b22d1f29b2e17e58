//! Per-tenant limits with Mimir's defaults and a runtime-reloaded overrides file.
