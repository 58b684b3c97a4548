// voxgate capture processor (AudioWorklet), loaded by captureMicrophone() in voxgate.js.
//
// Mixes the input to mono, low-passes and resamples it from the context's rate to
// the session's rate (linear interpolation after a box filter), converts it to
// 16-bit little-endian PCM and posts one frame of `frameSamples` samples at a time
// to the main thread ({type: "frame", pcm: ArrayBuffer}). On {type: "flush"} it
// posts what it holds as a last, shorter frame, then {type: "flushed"}, and stops.

class VoxgateCapture extends AudioWorkletProcessor {
  /** @param {{processorOptions: {targetRate: number, frameSamples: number}}} options */
  constructor(options) {
    super();
    const { targetRate, frameSamples } = options.processorOptions;
    // Input samples per output sample; `sampleRate` is the context's, a worklet global.
    this.step = sampleRate / targetRate;
    this.frameSamples = frameSamples;
    this.out = new Int16Array(frameSamples);
    this.fill = 0;
    // Position of the next output sample, in input samples from the current block's start.
    this.t = 0;
    this.prev = 0;
    // Box filter against aliasing when decimating: the mean of the last `taps` samples.
    this.taps = Math.max(1, Math.floor(this.step));
    this.history = new Float32Array(this.taps);
    this.historyAt = 0;
    this.historySum = 0;
    this.mono = new Float32Array(128);
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "flush") {
        if (this.fill > 0) this.post(this.out.slice(0, this.fill));
        this.fill = 0;
        this.stopped = true;
        this.port.postMessage({ type: "flushed" });
      }
    };
  }

  /** @param {Int16Array} pcm */
  post(pcm) {
    this.port.postMessage({ type: "frame", pcm: pcm.buffer }, [pcm.buffer]);
  }

  /** @param {number} sample */
  emit(sample) {
    const s = Math.max(-1, Math.min(1, sample));
    this.out[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.fill === this.frameSamples) {
      this.post(this.out);
      this.out = new Int16Array(this.frameSamples);
      this.fill = 0;
    }
  }

  /** @param {Float32Array[][]} inputs */
  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const n = channels[0].length;
    if (this.mono.length < n) this.mono = new Float32Array(n);
    const x = this.mono;
    for (let i = 0; i < n; i++) {
      let sum = 0;
      for (let c = 0; c < channels.length; c++) sum += channels[c][i];
      let v = sum / channels.length;
      if (this.taps > 1) {
        this.historySum += v - this.history[this.historyAt];
        this.history[this.historyAt] = v;
        this.historyAt = (this.historyAt + 1) % this.taps;
        v = this.historySum / this.taps;
      }
      x[i] = v;
    }
    // Interpolate between samples i and i+1 (i = -1 is the previous block's last).
    let t = this.t;
    while (t < n - 1) {
      const i = Math.floor(t);
      const frac = t - i;
      const a = i < 0 ? this.prev : x[i];
      this.emit(a + (x[i + 1] - a) * frac);
      t += this.step;
    }
    this.t = t - n;
    this.prev = x[n - 1];
    return true;
  }
}

registerProcessor("voxgate-capture", VoxgateCapture);
