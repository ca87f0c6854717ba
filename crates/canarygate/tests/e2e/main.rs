//! canarygate's end-to-end tests, in one test binary: the real binary on free loopback ports, driven by
//! real clients and servers (HTTP/1.1, HTTP/2, gRPC, WebSocket, TLS, curl, openssl, the AWS CLI and
//! boto3, PostgreSQL, Prometheus, Chromium). One module per area; `common` holds the helpers.
//!
//! `cargo test -p canarygate --test e2e` runs them all; `-- rollout::` one area. With
//! `CANARYGATE_TEST_STORE=postgres` the stage, rule, restart and rollout areas run against PostgreSQL.

mod common;

mod analysis;
mod attribution;
mod auth;
mod aws;
mod cache;
mod cli;
mod client_http;
mod dashboard;
mod demo;
mod grpc;
mod http2;
mod memory;
mod mirror;
mod notifications;
mod prometheus_alarms;
mod replicas;
mod restart;
mod rollout;
mod rules;
mod scale;
mod smuggling;
mod split;
mod steps;
mod tls;
mod tracing;
mod upstream;
mod websocket;
mod weights;
