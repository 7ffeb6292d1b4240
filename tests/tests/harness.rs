//! The test harness itself: a test that fails leaves nothing behind, like one
//! that passes (its database dropped, its JetStream stream deleted).

use jobmesh_tests::{Mesh, MeshOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_drops_its_database_like_a_passing_one() -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let mesh = Mesh::start(MeshOptions::default()).await.expect("a mesh");
        let _ = tx.send((mesh.database.clone(), mesh.nats.stream_name()));
        panic!("a test that fails before Mesh::stop");
    });
    let joined = failing.await;
    assert!(joined.is_err_and(|e| e.is_panic()), "the test failed");
    let (database, stream) = rx.await?;

    let (client, connection) = tokio_postgres::connect(
        &format!("{}/postgres", jobmesh_tests::postgres_server()),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await?
        .get(0);
    assert_eq!(left, 0, "database {database} was dropped");
    let nats = async_nats::connect(jobmesh_tests::nats_server()).await?;
    let found = async_nats::jetstream::new(nats).get_stream(&stream).await;
    assert!(found.is_err(), "stream {stream} was deleted");
    Ok(())
}
