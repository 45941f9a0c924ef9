//! One poll at a time against the real broker: what is published, in which
//! order, with which properties, and when the cursor moves.

mod support;

use std::time::Duration;
use support::*;
use warren_common::session::{PublishError, Session};
use warren_common::topology::Queue;
use warren_harness::broker::TestBroker;
use warren_harness::git::Upstream;
use warren_watcher::history::BranchChange;
use warren_watcher::poll::{PollError, poll_repo};
use warren_watcher::state::StateDir;

/// The lock is never contended in these tests.
const NO_WAIT: Duration = Duration::ZERO;

#[tokio::test]
async fn ten_commits_between_two_polls_are_ten_events_oldest_first() {
    let broker = TestBroker::new("watcher-ten");
    let upstream = Upstream::new();
    let first = commits(&upstream, 1, "first").remove(0);
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let repo = repo("api", &upstream.url());
    // A session as the watcher opens it, so that its app id is on the messages.
    let session = Session::connect(&broker.config, warren_watcher::APP_ID, "test watcher")
        .await
        .unwrap();

    let outcome = poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert_eq!(outcome.published(), 1);
    assert_eq!(
        outcome.branch("main").unwrap().change,
        BranchChange::FirstSeen
    );

    let ten = commits(&upstream, 10, "c");
    let outcome = poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert_eq!(outcome.published(), 10);
    assert_eq!(
        outcome.branch("main").unwrap().change,
        BranchChange::Advanced
    );
    assert_eq!(cursor(dir.path(), "api").as_ref(), ten.last());

    // Confirmed means queued: exactly these eleven, nothing else.
    assert_eq!(broker.queue_depth(Queue::Commits).await.0, 11);
    let events = take_events(&broker, 11).await;
    let mut expected = vec![first];
    expected.extend(ten.iter().cloned());
    assert_eq!(shas(&events), expected);

    let (event, delivery) = &events[3];
    assert_eq!(event.repo.as_str(), "api");
    assert_eq!(event.url.as_str(), upstream.url());
    assert_eq!(event.branch.as_str(), "main");
    assert_eq!(event.summary, "c-2");
    assert_eq!(event.author, "Warren Test <test@warren.invalid>");
    assert_eq!(event.parents.len(), 1);
    assert_eq!(event.parents[0].as_str(), ten[1]);
    assert_eq!(delivery.routing_key.as_str(), "api");
    let properties = &delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().unwrap().as_str(),
        format!("api@{}", ten[2])
    );
    assert_eq!(properties.delivery_mode(), &Some(2));
    assert_eq!(properties.kind().as_ref().unwrap().as_str(), "commit");
    assert_eq!(
        properties.app_id().as_ref().unwrap().as_str(),
        "warren-watcher"
    );
    assert_eq!(header(delivery, "x-warren-repo").as_deref(), Some("api"));
    assert_eq!(header(delivery, "x-warren-branch").as_deref(), Some("main"));
    assert_eq!(
        header(delivery, "x-warren-sha").as_deref(),
        Some(ten[2].as_str())
    );

    // Nothing new: nothing published.
    let outcome = poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert_eq!(outcome.published(), 0);
    assert_eq!(broker.queue_depth(Queue::Commits).await.0, 0);

    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_publish_that_is_not_confirmed_does_not_move_the_cursor() {
    let broker = TestBroker::new("watcher-unconfirmed");
    let upstream = Upstream::new();
    let first = commits(&upstream, 1, "first").remove(0);
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let repo = repo("api", &upstream.url());

    let session = broker.session().await;
    poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert_eq!(
        shas(&take_events(&broker, 1).await),
        std::slice::from_ref(&first)
    );

    // No queue: the broker returns the message, and the publish fails.
    let second = commits(&upstream, 2, "second");
    delete_commits_queue(&broker).await;
    let error = poll_repo(&repo, &state, &session, NO_WAIT)
        .await
        .unwrap_err();
    let PollError::Publish {
        published: 0,
        total: 2,
        source,
        ..
    } = &error
    else {
        panic!("expected a publish error with nothing confirmed, got {error:?}");
    };
    assert!(
        matches!(**source, PublishError::Unroutable { .. }),
        "{error:?}"
    );
    assert!(error.needs_reconnect());
    assert_eq!(cursor(dir.path(), "api"), Some(first));
    session.close().await;

    // A new session redeclares the topology; the next poll publishes both.
    let session = broker.session().await;
    let outcome = poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert_eq!(outcome.published(), 2);
    assert_eq!(shas(&take_events(&broker, 2).await), second);
    assert_eq!(cursor(dir.path(), "api").as_ref(), second.last());

    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn force_pushes_publish_only_commits_never_published() {
    let broker = TestBroker::new("watcher-force");
    let upstream = Upstream::new();
    let made = commits(&upstream, 3, "c");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let mut repo = repo("api", &upstream.url());
    repo.backfill = 5;
    let session = broker.session().await;

    // First sight with backfill: the three commits, oldest first.
    poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert_eq!(shas(&take_events(&broker, 3).await), made);

    // Back to the first commit: nothing new, and the cursor follows.
    upstream.reset("main", &made[0]);
    let outcome = poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert_eq!(
        outcome.branch("main").unwrap().change,
        BranchChange::MovedBack
    );
    assert_eq!(outcome.published(), 0);
    assert_eq!(cursor(dir.path(), "api").as_ref(), Some(&made[0]));

    // A rewritten history on top of it: only the new commit.
    let rewritten = upstream.commit("main", "rewritten", &[("r", Some("r"))]);
    let outcome = poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert_eq!(outcome.published(), 1);
    assert_eq!(shas(&take_events(&broker, 1).await), [rewritten]);
    assert_eq!(broker.queue_depth(Queue::Commits).await.0, 0);

    session.close().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_deleted_branch_keeps_its_cursor_and_publishes_nothing() {
    let broker = TestBroker::new("watcher-deleted");
    let upstream = Upstream::new();
    let made = commits(&upstream, 2, "c");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let repo = repo("api", &upstream.url());
    let session = broker.session().await;
    poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert_eq!(shas(&take_events(&broker, 1).await), made[1..]);

    git2::Repository::open_bare(upstream.url())
        .unwrap()
        .find_reference("refs/heads/main")
        .unwrap()
        .delete()
        .unwrap();
    let outcome = poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert!(outcome.branches.is_empty(), "{outcome:?}");
    assert_eq!(cursor(dir.path(), "api").as_ref(), made.last());

    // Pushed again on top of what was published: only the new commit.
    upstream.reset("main", &made[1]);
    let again = upstream.commit("main", "again", &[("again", Some("1"))]);
    let outcome = poll_repo(&repo, &state, &session, NO_WAIT).await.unwrap();
    assert_eq!(
        outcome.branch("main").unwrap().change,
        BranchChange::Advanced
    );
    assert_eq!(shas(&take_events(&broker, 1).await), [again]);
    assert_eq!(broker.queue_depth(Queue::Commits).await.0, 0);

    session.close().await;
    broker.cleanup().await;
}
