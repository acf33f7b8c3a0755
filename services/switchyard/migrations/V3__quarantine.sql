-- Ledger records PostgreSQL refused (bad data): kept as JSON text with the reason, so they
-- never block the records behind them and stay visible. `switchyard usage` counts them.
CREATE TABLE ledger_quarantine (
    id     BIGSERIAL PRIMARY KEY,
    record TEXT NOT NULL,
    error  TEXT NOT NULL,
    at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
