"""Measurement helpers of the benchmarks: device peaks, FLOP counts, the bundles' training loops timed."""

from .peak import DevicePeak, count_flops, device_peak

__all__ = ["DevicePeak", "count_flops", "device_peak"]
