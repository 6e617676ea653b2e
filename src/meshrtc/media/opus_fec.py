"""When to send Opus in-band FEC: a sans-IO policy fed with the remote's reports (docs/codecs.md).

Opus in-band FEC (LBRR) puts a low-bitrate copy of each frame into the packet after it, so a
receiver that lost a packet but has the next one decodes the copy instead of concealing. The copy
is paid for out of the same bitrate: on a clean path it only makes the audio worse (issue 17: at
32 kb/s the no-loss PESQ fell from 4.03 to 3.63). So FEC follows the loss the *receiver* reports
about our audio (RTCP receiver reports, ``fraction lost`` of our audio SSRC, roughly one a second):

* the reports are smoothed (exponential, ``smoothing`` per report, starting from a clean path), so
  one unlucky interval does not switch anything: a single lost packet in a one-second report (2%)
  lifts the smoothed loss to 0.6%, two in a row to 1.0%;
* FEC goes **on** once the smoothed loss reaches ``on_percent``, and tells libopus to expect the
  smoothed loss rounded up (``packet_loss_percent``, at least 1, at most ``max_percent``): libopus
  sizes the LBRR layer by it, and sends none at 0%;
* FEC goes **off** only after the smoothed loss stayed under ``off_percent`` for ``clean_s``
  (hysteresis: between the two thresholds nothing changes);
* two switches are never closer than ``hold_s`` (no flapping on a path whose loss hovers).

Only reports move the policy (there is no timer): a path with no reports keeps its setting. The
policy decides; the caller applies it to the encoder (``rtc/peer.py`` through the adapter) and
raises the Opus bitrate floor while FEC is on (:data:`meshrtc.media.quality.OPUS_FEC_MIN_KBPS`).
"""

from __future__ import annotations

import math

import attrs

from meshrtc.errors import MeshRtcError

__all__ = ["FecDecision", "FecPolicy", "FecPolicyError", "FecSetting"]


class FecPolicyError(MeshRtcError):
    """A policy parameter is out of range."""


@attrs.frozen(slots=True)
class FecSetting:
    """What the Opus encoder is told: in-band FEC on or off, and the loss it should expect (0-100;
    0 whenever FEC is off, so libopus spends nothing on it)."""

    inband_fec: bool = False
    packet_loss_percent: int = 0


@attrs.frozen(slots=True)
class FecDecision:
    """The setting after one report, the one before, and why."""

    setting: FecSetting
    previous: FecSetting
    smoothed_loss: float
    reason: str

    @property
    def changed(self) -> bool:
        return self.setting != self.previous

    @property
    def toggled(self) -> bool:
        """FEC itself switched (not only the expected loss)."""
        return self.setting.inband_fec != self.previous.inband_fec


@attrs.define
class FecPolicy:
    """Loss reports about our audio → :class:`FecSetting` (module docstring for the rule)."""

    on_percent: float = attrs.field(default=1.0)
    off_percent: float = attrs.field(default=0.5)
    #: Weight of each new report in the smoothed loss.
    smoothing: float = attrs.field(default=0.3)
    max_percent: int = attrs.field(default=25)
    #: How long the smoothed loss must stay under ``off_percent`` before FEC goes off (seconds).
    clean_s: float = attrs.field(default=10.0)
    #: Shortest time between two switches of FEC (seconds).
    hold_s: float = attrs.field(default=4.0)
    _smoothed: float = attrs.field(default=0.0, init=False)
    _setting: FecSetting = attrs.field(factory=FecSetting, init=False)
    _switched_at: float | None = attrs.field(default=None, init=False)
    _clean_since: float | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        for name in ("on_percent", "off_percent", "smoothing", "max_percent", "clean_s", "hold_s"):
            if not getattr(self, name) > 0:
                raise FecPolicyError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.smoothing <= 1:
            raise FecPolicyError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if not self.off_percent <= self.on_percent <= 100:
            raise FecPolicyError("need 0 < off_percent <= on_percent <= 100")
        if not self.max_percent <= 100:
            raise FecPolicyError(f"max_percent must be <= 100, got {self.max_percent}")

    @property
    def setting(self) -> FecSetting:
        return self._setting

    @property
    def smoothed_loss(self) -> float:
        return self._smoothed

    def on_report(self, at: float, loss_percent: float) -> FecDecision:
        """One receiver report about our audio: ``loss_percent`` is its fraction lost (0-100),
        ``at`` when it arrived (the caller's clock; reports in arrival order)."""
        loss = min(100.0, max(0.0, loss_percent))
        self._smoothed += self.smoothing * (loss - self._smoothed)
        smoothed = self._smoothed
        if smoothed < self.off_percent:
            if self._clean_since is None:
                self._clean_since = at
        else:
            self._clean_since = None
        previous = self._setting
        held = self._switched_at is not None and at - self._switched_at < self.hold_s
        on = previous.inband_fec
        if not on and smoothed >= self.on_percent:
            if held:
                reason = "loss seen; holding off after the last switch"
            else:
                on, reason = True, f"loss {smoothed:.1f}% >= {self.on_percent}%"
        elif on and self._clean_since is not None and at - self._clean_since >= self.clean_s:
            if held:
                reason = "clean; holding on after the last switch"
            else:
                on, reason = False, f"loss under {self.off_percent}% for {self.clean_s:.0f} s"
        else:
            reason = "on" if on else "off"
        if on:
            expected = min(self.max_percent, max(1, math.ceil(smoothed - 1e-9)))
            self._setting = FecSetting(True, expected)
        else:
            self._setting = FecSetting()
        if self._setting.inband_fec != previous.inband_fec:
            self._switched_at = at
        return FecDecision(self._setting, previous, smoothed, reason)
