//! Counter arithmetic shared by the kernel (which adds) and userspace (which sums per-CPU values).

use weir_common::stats::IfStats;

/// Adds one packet of `len` bytes to `s`.
#[inline(always)]
pub fn account(s: &mut IfStats, len: u32) {
    s.packets = s.packets.wrapping_add(1);
    s.bytes = s.bytes.wrapping_add(len as u64);
}

/// Sums per-CPU values into one total.
pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a IfStats>) -> IfStats {
    per_cpu.into_iter().fold(IfStats::default(), |mut acc, s| {
        acc.packets = acc.packets.wrapping_add(s.packets);
        acc.bytes = acc.bytes.wrapping_add(s.bytes);
        acc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_adds_one_packet() {
        let mut s = IfStats::default();
        account(&mut s, 60);
        account(&mut s, 40);
        assert_eq!(s, IfStats { packets: 2, bytes: 100 });
    }

    #[test]
    fn sum_adds_all_cpus() {
        let cpus = [IfStats { packets: 1, bytes: 10 }, IfStats { packets: 2, bytes: 5 }];
        assert_eq!(sum(&cpus), IfStats { packets: 3, bytes: 15 });
    }
}
