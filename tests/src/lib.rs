//! End-to-end tests of Switchyard live in `tests/`: real processes, the embedded broker over TCP,
//! llm-sim over HTTP, PostgreSQL and Chromium. Shared helpers are in `switchyard-testkit`.
