//! The long-running watcher against the real broker: restarts, broker
//! failures, failing repositories, graceful stops.

mod support;

use support::*;
use warren_common::topology::Queue;
use warren_harness::broker::TestBroker;
use warren_harness::git::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_watcher_publishes_only_what_is_new() {
    let broker = TestBroker::new("watcher-restart");
    let upstream = Upstream::new();
    let first = commits(&upstream, 1, "first");
    let dir = tempfile::tempdir().unwrap();
    let config = config(&broker, dir.path(), vec![repo("api", &upstream.url())]);

    let watcher = spawn_watcher(config.clone());
    assert_eq!(shas(&take_events(&broker, 1).await), first);
    wait_for("the first cursor", || {
        cursor(dir.path(), "api").as_ref() == first.last()
    })
    .await;
    let two = commits(&upstream, 2, "two");
    assert_eq!(shas(&take_events(&broker, 2).await), two);
    wait_for("the cursor at the second push", || {
        cursor(dir.path(), "api").as_ref() == two.last()
    })
    .await;
    watcher.stop().await;

    // Commits made while no watcher runs, then a new watcher on the same state.
    let three = commits(&upstream, 3, "three");
    let watcher = spawn_watcher(config);
    assert_eq!(shas(&take_events(&broker, 3).await), three);
    wait_for("the cursor at the last commit", || {
        cursor(dir.path(), "api").as_ref() == three.last()
    })
    .await;
    watcher.stop().await;
    assert_eq!(broker.queue_depth(Queue::Commits).await.0, 0);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_publish_the_watcher_reconnects_and_publishes_again() {
    let broker = TestBroker::new("watcher-reconnect");
    let upstream = Upstream::new();
    let first = commits(&upstream, 1, "first");
    let dir = tempfile::tempdir().unwrap();
    let config = config(&broker, dir.path(), vec![repo("api", &upstream.url())]);
    let watcher = spawn_watcher(config);
    assert_eq!(shas(&take_events(&broker, 1).await), first);

    // Without its queue, the next publish is returned unroutable. Only a new
    // session of the watcher (which redeclares the topology) brings the
    // queue back, so the queue reappearing proves that the watcher dropped
    // its session after the failure and reconnected. (Taking events before
    // that would redeclare it: the test's own session declares too.)
    delete_commits_queue(&broker).await;
    let next = commits(&upstream, 1, "next");
    wait_for_commits_queue(&broker).await;
    assert_eq!(shas(&take_events(&broker, 1).await), next);
    wait_for("the cursor after reconnecting", || {
        cursor(dir.path(), "api").as_ref() == next.last()
    })
    .await;

    watcher.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_repository_does_not_stop_the_others() {
    let broker = TestBroker::new("watcher-isolation");
    let api = Upstream::new();
    let web = Upstream::new();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.git").display().to_string();
    let config = config(
        &broker,
        &dir.path().join("state"),
        vec![
            repo("api", &api.url()),
            repo("broken", &missing),
            repo("web", &web.url()),
        ],
    );
    let api_first = commits(&api, 1, "api");
    let watcher = spawn_watcher(config);
    assert_eq!(shas(&take_events(&broker, 1).await), api_first);

    // Still polling: a push to another repository after several failed
    // polls of the broken one is published too.
    let web_first = commits(&web, 1, "web");
    let events = take_events(&broker, 1).await;
    assert_eq!(shas(&events), web_first);
    assert_eq!(events[0].0.repo.as_str(), "web");
    let api_more = commits(&api, 2, "api-more");
    assert_eq!(shas(&take_events(&broker, 2).await), api_more);

    watcher.stop().await;
    assert_eq!(cursor(&dir.path().join("state"), "broken"), None);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_repositories_than_fetch_slots_are_all_polled() {
    let broker = TestBroker::new("watcher-many");
    let dir = tempfile::tempdir().unwrap();
    let upstreams: Vec<Upstream> = (0..12).map(|_| Upstream::new()).collect();
    let mut tips = Vec::new();
    let mut repos = Vec::new();
    for (i, upstream) in upstreams.iter().enumerate() {
        tips.extend(commits(upstream, 1, &format!("r{i}")));
        repos.push(repo(&format!("r{i}"), &upstream.url()));
    }
    let watcher = spawn_watcher(config(&broker, dir.path(), repos));
    let mut published = shas(&take_events(&broker, tips.len()).await);
    published.sort();
    tips.sort();
    assert_eq!(published, tips);
    watcher.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_finishes_the_publish_in_hand() {
    let broker = TestBroker::new("watcher-graceful");
    let upstream = Upstream::new();
    // One file changed 500 times: a small tree, so the commits are quick to make.
    let made: Vec<String> = (0..500)
        .map(|i| upstream.commit("main", &format!("c-{i}"), &[("f", Some(&i.to_string()))]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut repo = repo("api", &upstream.url());
    repo.backfill = 499;

    // Holding the cursor file's lock stops the watcher at its first cursor
    // save, after the first window of the 500-commit publish: the stop below
    // then certainly comes in the middle of the publish.
    let lock_file = std::fs::File::create(dir.path().join("cursors.lock")).unwrap();
    let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let watcher = spawn_watcher(config(&broker, dir.path(), vec![repo]));
    wait_for_commits_queue(&broker).await;
    let window = warren_watcher::poll::PUBLISH_WINDOW;
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while (broker.queue_depth(Queue::Commits).await.0 as usize) < window {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first window was not published"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    watcher.cancel();
    assert!(
        !watcher.is_finished(),
        "the watcher stopped with a publish in hand"
    );
    assert_eq!(cursor(dir.path(), "api"), None);
    drop(lock);
    watcher.stop().await;

    assert_eq!(broker.queue_depth(Queue::Commits).await.0, 500);
    assert_eq!(cursor(dir.path(), "api").as_ref(), made.last());
    assert_eq!(shas(&take_events(&broker, 500).await), made);
    broker.cleanup().await;
}
