//! The gRPC fixtures the kernel tests rely on, checked against each other: every client stack
//! against every server stack gets the calls, statuses and delays it asked for. No root needed.

use std::time::Duration;

use kite_testkit::{
    Place, free_port,
    grpc::{self, Stack},
};

const SPEC: &str = "Unary:3:0,Lookup:1:5,Unary:2:14,Stream:2:0:3,Stream:1:5:2";

#[test]
fn every_client_stack_talks_to_every_server_stack() {
    for server_stack in Stack::ALL {
        let port = free_port();
        let _server = grpc::server(server_stack, Place::default(), port);
        for client_stack in Stack::ALL {
            let calls = grpc::client(
                client_stack,
                Place::default(),
                &format!("127.0.0.1:{port}"),
                40,
                8,
                SPEC,
                Duration::from_secs(60),
            );
            let pair = format!("{client_stack:?} client → {server_stack:?} server");
            assert_eq!(calls.counts(), grpc::planned(40, SPEC), "{pair}");
            for c in &calls.0 {
                let delay = match c.method.as_str() {
                    "Unary" if c.code == 0 => 3.0,
                    "Unary" => 2.0,
                    "Lookup" => 1.0,
                    _ if c.code == 0 => 2.0,
                    _ => 1.0,
                };
                assert!(
                    c.first_ms >= delay && c.end_ms >= c.first_ms,
                    "{pair}: {c:?} answered before its {delay} ms delay"
                );
            }
        }
    }
}

#[test]
fn churning_metadata_is_echoed_by_every_stack() {
    for stack in Stack::ALL {
        let port = free_port();
        let _server = grpc::server(stack, Place::default(), port);
        let calls = grpc::churning_client(
            stack,
            Place::default(),
            &format!("127.0.0.1:{port}"),
            200,
            8,
            SPEC,
            Duration::from_secs(60),
        );
        assert_eq!(calls.counts(), grpc::planned(200, SPEC), "{stack:?}");
        assert_eq!(
            calls.1,
            grpc::Echoed(200),
            "{stack:?}: every call's metadata came back"
        );
    }
}
