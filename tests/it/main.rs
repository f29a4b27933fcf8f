//! Integration tests: the real binary, real git repositories, the real
//! guix-daemon and the real Guix evaluator.

mod admin;
mod chaos;
mod cli;
mod cycle;
mod daemon;
mod faults;
mod guix_ci;
mod hostile;
mod http;
mod http_hostile;
mod jobs;
mod logs;
mod names;
mod offload;
mod one_shot;
mod refs;
mod specs;
mod support;
mod web;
