//! The crate's clock: wall time in Unix milliseconds, the unit every record, envelope and
//! signature carries. One function, so that what "now" means is decided in one place.

use time::OffsetDateTime;

/// Now, in milliseconds since the Unix epoch (0 before the epoch).
pub(crate) fn now_ms() -> u64 {
    unix_ms(OffsetDateTime::now_utc())
}

/// `t` in milliseconds since the Unix epoch (0 before the epoch).
pub(crate) fn unix_ms(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_read_as_zero() {
        assert_eq!(unix_ms(OffsetDateTime::UNIX_EPOCH), 0);
        assert_eq!(
            unix_ms(OffsetDateTime::UNIX_EPOCH - time::Duration::SECOND),
            0
        );
        assert_eq!(
            unix_ms(OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(1500)),
            1500
        );
        assert!(now_ms() > 1_700_000_000_000);
    }
}
