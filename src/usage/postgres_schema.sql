-- tollgate usage schema: the design guide's tables, with text ids (callers'
-- user and usage ids are not always UUIDs). Applied at every start;
-- every statement is idempotent.
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email VARCHAR(255) UNIQUE,
    tier VARCHAR(64) NOT NULL DEFAULT 'basic',
    -- the time of the event the tier was taken from (the latest wins)
    tier_at TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS api_usage (
    id TEXT PRIMARY KEY,                    -- the usage_id: the idempotency key
    user_id TEXT NOT NULL REFERENCES users(id),
    timestamp TIMESTAMPTZ NOT NULL,
    category VARCHAR(64) NOT NULL,
    operation VARCHAR(64),
    endpoint VARCHAR(255),
    duration_ms INTEGER NOT NULL DEFAULT 0,
    request_ip VARCHAR(64),
    status_code INTEGER,
    success BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS usage_metrics (
    usage_id TEXT NOT NULL REFERENCES api_usage(id),
    metric_name VARCHAR(64) NOT NULL,
    metric_value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (usage_id, metric_name)
);

CREATE TABLE IF NOT EXISTS daily_usage (
    user_id TEXT NOT NULL REFERENCES users(id),
    date DATE NOT NULL,
    category VARCHAR(64) NOT NULL,
    request_count BIGINT NOT NULL DEFAULT 0,
    compute_units DOUBLE PRECISION NOT NULL DEFAULT 0,
    tokens BIGINT NOT NULL DEFAULT 0,
    storage_bytes BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, date, category)
);

-- Every metric per user and day, whatever its name (daily_usage keeps the
-- guide's fixed columns).
CREATE TABLE IF NOT EXISTS daily_metrics (
    user_id TEXT NOT NULL REFERENCES users(id),
    date DATE NOT NULL,
    metric_name VARCHAR(64) NOT NULL,
    value DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, date, metric_name)
);

CREATE TABLE IF NOT EXISTS billing_records (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    billing_period_start DATE NOT NULL,
    billing_period_end DATE NOT NULL,
    base_amount DECIMAL(12, 2) NOT NULL DEFAULT 0,
    usage_amount DECIMAL(12, 2) NOT NULL DEFAULT 0,
    total_amount DECIMAL(12, 2) NOT NULL DEFAULT 0,
    status VARCHAR(50) NOT NULL DEFAULT 'pending',
    created_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS billing_details (
    id TEXT PRIMARY KEY,
    billing_id TEXT NOT NULL REFERENCES billing_records(id),
    category VARCHAR(64) NOT NULL,
    item_description TEXT NOT NULL,
    quantity NUMERIC NOT NULL,
    unit_price DECIMAL(12, 6) NOT NULL,
    amount DECIMAL(12, 2) NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_api_usage_user_id ON api_usage(user_id);
CREATE INDEX IF NOT EXISTS idx_api_usage_timestamp ON api_usage(timestamp);
CREATE INDEX IF NOT EXISTS idx_api_usage_category ON api_usage(category);
CREATE INDEX IF NOT EXISTS idx_billing_records_user_period ON billing_records(user_id, billing_period_start, billing_period_end);
