"""Commands of this group are added by the stage that owns them (see docs/ARCHITECTURE.md)."""
