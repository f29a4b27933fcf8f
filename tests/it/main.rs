//! Integration tests: the real binary, real git repositories, the real
//! guix-daemon and the real Guix evaluator.

mod chaos;
mod cli;
mod daemon;
mod faults;
mod guix_ci;
mod hostile;
mod http;
mod http_hostile;
mod one_shot;
mod support;
mod web;
