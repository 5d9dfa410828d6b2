//! The exit codes of docs/cli.md as the real binary gives them, with their messages: a usage
//! error, a configuration error and an unconfirmed purge (2), Redis and the database unreachable (3, 4), and a
//! cleanup refused while another holds the run lock (5). Each runs against the fixed world and
//! must change nothing.

use crate::world::{insta_settings, World};

/// The cases, in order: their snapshots are `error_<case>`.
pub(crate) const CASES: [&str; 6] = [
    "usage",
    "config",
    "purge_unconfirmed",
    "redis_unreachable",
    "database_unreachable",
    "busy",
];

/// A port nothing listens on (connections are refused at once).
const CLOSED: &str = "127.0.0.1:1";

#[tokio::test]
async fn exit_codes_and_messages_of_failures() {
    let world = World::new().await;
    let settings = insta_settings(&world.filters());
    let _guard = settings.bind_to_scope();
    let redis_url = format!("redis://{CLOSED}/0");
    let database_url = format!("postgresql://root@{CLOSED}/nowhere");
    let cases: [(&str, Vec<&str>, i32); 6] = [
        ("usage", vec!["status", "--no-such-flag"], 2),
        ("config", vec!["cleanup-orphaned", "--grace", "-1"], 2),
        // No terminal to ask on (the tests' standard input is not one) and no --yes.
        ("purge_unconfirmed", vec!["purge-queue", "celery"], 2),
        (
            "redis_unreachable",
            vec!["--redis-url", &redis_url, "status", "--grace", "0"],
            3,
        ),
        (
            "database_unreachable",
            vec!["--database-url", &database_url, "status", "--grace", "0"],
            4,
        ),
        ("busy", vec!["cleanup-orphaned", "--grace", "0"], 5),
    ];
    assert_eq!(cases.iter().map(|c| c.0).collect::<Vec<_>>(), CASES);
    let before = janitor_testkit::redis_server::Snapshot::take(&world.redis).await;
    for (name, args, code) in cases {
        if name == "busy" {
            hold_the_lock(&world).await;
        }
        let run = world.run(&args);
        assert_eq!(run.code, code, "{}", run.render());
        insta::assert_snapshot!(format!("error_{name}"), run.render());
    }
    let after = janitor_testkit::redis_server::Snapshot::take(&world.redis).await;
    assert_eq!(before, after, "a failed command changed Celery's keys");
}

/// Another run's lock, as celery-janitor writes it, held by a process of another host.
async fn hold_the_lock(world: &World) {
    let mut con = world.redis.con().await;
    let holder = serde_json::json!({
        "host": "worker-7",
        "pid": 4242,
        "run_id": "20261128T041200Z-0badf00d",
        "since": "2026-11-28T04:12:00Z",
        "token": "0123456789abcdef",
    });
    let _: () = redis::cmd("SET")
        .arg("celery-janitor:lock")
        .arg(holder.to_string())
        .arg("EX")
        .arg(3600)
        .query_async(&mut con)
        .await
        .unwrap();
}

/// `serve` refuses to start — exit 2, one line — without credentials, and with
/// `--insecure-no-auth` off loopback; `token new` prints a token whose digest is in its table.
#[tokio::test]
async fn serve_refuses_unsafe_starts_and_token_new_prints_a_usable_table() {
    let world = World::new().await;
    for (args, says) in [
        (vec!["serve"], "no API credentials are configured"),
        (
            vec!["serve", "--insecure-no-auth", "--bind", "0.0.0.0:1"],
            "--insecure-no-auth is refused on 0.0.0.0:1",
        ),
    ] {
        let run = world.run(&args);
        assert_eq!(run.code, 2, "{}", run.render());
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", run.render());
        assert!(lines[0].contains(says), "{}", run.render());
    }

    let run = world.run(&["token", "new", "--name", "ops", "--role", "admin"]);
    assert_eq!(run.code, 0, "{}", run.render());
    let (token, table) = run.stdout.split_once('\n').unwrap();
    assert!(token.starts_with("cjt_"), "{}", run.render());
    assert!(!table.contains(token));
    assert!(table.contains(&format!(
        "sha256 = \"{}\"",
        janitor_server::token_digest_hex(token)
    )));
    assert!(table.contains("role = \"admin\""));
    let bad = world.run(&["token", "new", "--name", "a b", "--role", "admin"]);
    assert_eq!(bad.code, 2, "{}", bad.render());
}
