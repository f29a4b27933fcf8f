//! Integration tests: the real binary, real git repositories, the real
//! guix-daemon and the real Guix evaluator.

mod cli;
mod daemon;
mod http;
mod one_shot;
mod support;
mod web;
