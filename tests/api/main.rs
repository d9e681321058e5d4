//! Integration tests: the real app on port 0 (or the real binary) against fakes.

mod admin;
mod apply;
mod browser;
mod cli;
mod command;
mod fake_bitbucket;
mod fake_port;
mod gitops;
mod helpers;
mod hub;
mod journal;
mod kubernetes;
mod pg;
mod pg_tls;
mod port_client;
mod provision;
mod pull;
mod pushes;
mod reconcile;
mod replicas;
mod runs;
mod ship;
mod stores;
mod tool;
mod wait;
mod webhook;
