use ringseal_testkit::*;

#[tokio::test]
async fn echo_through_sidecar() {
    let pki = Pki::new();
    let backend = Backend::start(Mode::Echo).await;
    let sidecar = Sidecar::start(config(&pki, backend.addr)).await;
    let client = client(pki.roots(), Some(&pki.node));
    within("roundtrip", roundtrip(&client, LOCALHOST, sidecar.addr))
        .await
        .unwrap();
    assert_eq!(backend.accepted(), 1);
    assert_eq!(sidecar.stop().await.cut, 0);
}
