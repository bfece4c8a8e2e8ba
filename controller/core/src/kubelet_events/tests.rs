//! Tests of `kubelet_events`, beside it so that the parsing reads on its own.

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn go_durations_in_every_form_the_kubelet_prints() {
    for (text, want) in [
        ("0s", Duration::ZERO),
        ("0", Duration::ZERO),
        ("500ms", ms(500)),
        ("12.3s", ms(12_300)),
        ("1m2.5s", ms(62_500)),
        ("1h2m3.004s", ms(3_723_004)),
        ("2m0s", ms(120_000)),
        ("1.5µs", Duration::from_nanos(1_500)),
        ("1.5μs", Duration::from_nanos(1_500)),
        ("250us", Duration::from_micros(250)),
        ("100ns", Duration::from_nanos(100)),
        (".5s", ms(500)),
        ("1.s", ms(1_000)),
    ] {
        assert_eq!(go_duration(text), Some(want), "{text}");
    }
}

#[test]
fn malformed_durations_are_refused() {
    for text in [
        "", "s", "12", "1.2.3s", "-1s", "1d", "1 s", "1sx", "1m2", ".s", "abc",
    ] {
        assert_eq!(go_duration(text), None, "{text:?}");
    }
}

#[test]
fn a_pull_reads_its_image_both_durations_and_size() {
    let message = r#"Successfully pulled image "nginx:1.28" in 1m2.5s (1m3.75s including waiting). Image size: 72187654 bytes."#;
    assert_eq!(
        Pulled::read(message),
        Some(Pulled::Pulled {
            image: "nginx:1.28".into(),
            pull: ms(62_500),
            waited: ms(63_750),
            size_bytes: 72_187_654,
        })
    );
    let quick = r#"Successfully pulled image "registry.example:5000/team/app@sha256:0123" in 500ms (500ms including waiting). Image size: 0 bytes."#;
    assert_eq!(
        Pulled::read(quick).map(|p| p.image().to_string()),
        Some("registry.example:5000/team/app@sha256:0123".into())
    );
}

#[test]
fn both_warm_forms_are_read() {
    for message in [
        r#"Container image "busybox:1.36" already present on machine"#,
        r#"Container image "busybox:1.36" already present on machine and can be accessed by the pod"#,
        r#"(combined from similar events): Container image "busybox:1.36" already present on machine"#,
    ] {
        assert_eq!(
            Pulled::read(message),
            Some(Pulled::AlreadyPresent {
                image: "busybox:1.36".into()
            }),
            "{message}"
        );
    }
}

#[test]
fn messages_in_no_kubelet_form_are_refused() {
    for message in [
        "",
        r#"Pulling image "nginx:1.28""#,
        r#"Container image "busybox:1.36" present"#,
        r#"Container image "" already present on machine"#,
        r#"Successfully pulled image "nginx" in 1s (1s including waiting)."#,
        r#"Successfully pulled image "nginx" in soon (1s including waiting). Image size: 1 bytes."#,
        r#"Successfully pulled image "nginx" in 1s (1s including waiting). Image size: many bytes."#,
        r#"Successfully pulled image nginx in 1s (1s including waiting). Image size: 1 bytes."#,
    ] {
        assert_eq!(Pulled::read(message), None, "{message}");
    }
}

#[test]
fn field_paths_name_the_part_of_the_pod() {
    assert_eq!(
        PodPart::from_field_path(Some("spec.containers{web}")),
        Some(PodPart::Container("web".into()))
    );
    assert_eq!(
        PodPart::from_field_path(Some("spec.initContainers{migrate}")),
        Some(PodPart::InitContainer("migrate".into()))
    );
    assert_eq!(
        PodPart::from_field_path(Some("spec.ephemeralContainers{debug}")),
        Some(PodPart::EphemeralContainer("debug".into()))
    );
    assert_eq!(PodPart::from_field_path(None), Some(PodPart::ImageVolume));
    assert_eq!(
        PodPart::from_field_path(Some("")),
        Some(PodPart::ImageVolume)
    );
    for odd in [
        "spec.containers[0]",
        "spec.volumes{data}",
        "spec.containers{web",
    ] {
        assert_eq!(PodPart::from_field_path(Some(odd)), None, "{odd}");
    }
}

proptest::proptest! {
    #[test]
    fn any_millisecond_duration_printed_as_go_prints_it_reads_back(millis in 0u64..400_000_000) {
        proptest::prop_assert_eq!(go_duration(&go_format(ms(millis))), Some(ms(millis)));
    }
}

/// Go's `time.Duration.String()` for a whole number of milliseconds, as the kubelet prints the
/// durations it truncated to milliseconds.
fn go_format(d: Duration) -> String {
    let millis = d.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    if millis < 1_000 {
        return format!("{millis}ms");
    }
    let (hours, rest) = (millis / 3_600_000, millis % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let seconds = match rest % 1_000 {
        0 => format!("{}s", rest / 1_000),
        fraction => format!(
            "{}.{}s",
            rest / 1_000,
            format!("{fraction:03}").trim_end_matches('0')
        ),
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}
