//! Integration tests: the real binary, real git repositories, the real
//! guix-daemon and the real Guix evaluator.

mod admin;
mod aliases;
mod chaos;
mod cli;
mod cycle;
mod daemon;
mod faults;
mod gcroots;
mod guix_ci;
mod hostile;
mod http;
mod http_hostile;
mod jobs;
mod logs;
mod names;
mod notify;
mod offload;
mod one_shot;
mod queue;
mod refs;
mod specs;
mod support;
mod web;
mod wedged;
