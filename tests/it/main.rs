//! casegate's integration tests: one binary, real servers on loopback port 0, real Redis
//! instances spawned per test, real signatures.

mod bounds;
mod buffer;
mod buffer_redis;
mod cluster;
mod delivery;
mod exposure;
mod faults;
mod hostile;
mod ingest_props;
mod ingress;
mod long_faults;
mod operate;
mod operators;
mod pause_reporting;
mod readme;
mod records;
mod reload;
mod replay;
mod replicas;
mod scale;
mod security;
mod serve;
mod slow_clients;
mod support;
mod vectors;
