// meshrtc browser client: joins a session through meshrtc's signaling server (docs/signaling.md)
// and keeps one RTCPeerConnection per other peer of the session: the meshrtc transport running
// the pipeline, and other browsers (full mesh). Plain JavaScript, no build step (docs/browser.md).
//
// The rules followed are those of meshrtc's own PeerManager and PeerConnection (docs/peers.md):
// - the newcomer offers to every peer of its announce result; the others wait for its offer;
// - a later negotiation (a rebuilt link) is offered by the lower peer id; the higher id is polite:
//   on glare it drops its own offer and answers, the lower id ignores the colliding offer;
// - an offer on a live link means the remote rebuilt its connection: answer it on a new
//   RTCPeerConnection (aiortc has no ICE restart, so meshrtc never renegotiates in place);
// - offers carry `a=x-meshrtc-attempt:<tag>` and answers echo the remote's tag, so a late answer
//   to an abandoned attempt is recognised; an answer with `a=x-meshrtc-refused` ends the link;
// - an offer this page cannot answer gets `peer.error` (code -32009, the browser's reason) instead
//   of silence, and a `peer.error` answering our offer ends the link with its reason;
// - media outlives signaling: after our WebSocket comes back (we announce again, with our resume
//   secret and this page's `incarnation`) a connected link is kept if its peer is the same client
//   instance (same incarnation), or not back yet; `peer.joined` of the same instance keeps it;
//   `peer.left` for a dropped connection holds a connected link for SETTLE_MS (docs/signaling.md,
//   "Re-announcing").
//
// URL parameters (all optional): session, name, id (peer id; default: the name made valid),
// codec (VP9 | H264 | VP8 | AV1: put first with RTCRtpTransceiver.setCodecPreferences),
// autojoin=1, ice=loopback (signal only 127.0.0.1/::1 candidates), width, height, fps (camera),
// ws (signaling URL; default ws(s)://<this host>/ws), token, stun (a stun: URL).
//
// Test hooks live on window.meshrtc (snapshot(), stats(), send(), lastEcho, ...), so tests read
// state instead of scraping the page.
"use strict";

(() => {
  const CLIENT = "meshrtc-web";
  const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
  const ATTEMPT = "x-meshrtc-attempt";
  const REFUSED = "x-meshrtc-refused";
  const UNANSWERABLE_OFFER = -32009; // docs/signaling.md, peer.error
  // Mirrors PeerOptions: first connection 10 s, rebuilt ones 2.5 s, backoff 0.25 s doubling to
  // 1 s (8 tries), and the polite (higher-id) side waits 1 s more for the other's offer.
  const CONNECT_TIMEOUT_MS = 10000;
  const RECONNECT_TIMEOUT_MS = 2500;
  const BACKOFF_INITIAL_MS = 250;
  const BACKOFF_MAX_MS = 1000;
  const BACKOFF_TRIES = 8;
  const POLITE_WAIT_MS = 1000;
  // How long a connected link outlives a peer.left for a dropped connection: the server's resume
  // grace, within which the peer may announce again.
  const SETTLE_MS = 30000;
  // This page's client instance, sent with every announce: the others keep their links to us when
  // we announce again after a drop, and replace them when the page is reloaded (a new instance).
  const INCARNATION = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
  const DISCONNECTED_GRACE_MS = 3000;
  const MAX_MESSAGES = 500;

  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);

  const api = {
    state: "idle", // idle | joining | joined | reconnecting | left | error
    peerId: null,
    sessionId: null,
    error: null,
    codec: null,
    media: { audio: false, video: false, error: null },
    sessionPeers: [], // what the signaling server says is in the session (other peers)
    messages: [], // {kind: "sent" | "echo" | "chat" | "system", from, text, at}
    echoes: [],
    lastEcho: null,
    log: [],
    builds: 0, // RTCPeerConnections built so far (a kept link builds none)
    incarnation: INCARNATION,
    join: (options) => join(options || {}),
    leave: () => leave(),
    send: (text) => sendText(String(text)),
    stats: () => collectStats(),
    snapshot: () => snapshot(),
    // Test hook: the WebSocket closes as if the network dropped it (no peer.disconnect).
    dropSignaling: () => {
      if (signaling && signaling.ws) signaling.ws.close(4000, "dropped");
    },
  };
  window.meshrtc = api;

  let signaling = null;
  /** The resume secret of our last announce ({peerId, secret}), sent when we announce that id again. */
  let resume = null;
  let localStream = null;
  let iceServers = [];
  let loopbackOnly = false;
  const links = new Map(); // remote peer id -> Link
  let statsTimer = null;

  function note(text) {
    const line = `${new Date().toISOString().slice(11, 23)} ${text}`;
    api.log.push(line);
    if (api.log.length > 1000) api.log.shift();
    console.log(`[meshrtc] ${text}`);
  }

  // --- SDP helpers (same rules as meshrtc.rtc.peer) ------------------------------------------

  function sessionAttribute(sdp, name) {
    for (const line of sdp.split(/\r?\n/)) {
      if (line.startsWith("m=")) return null;
      if (line.startsWith(`a=${name}:`)) return line.slice(name.length + 3).trim();
    }
    return null;
  }

  function withSessionAttribute(sdp, name, value) {
    const eol = sdp.includes("\r\n") ? "\r\n" : "\n";
    const lines = sdp.split(eol);
    let at = lines.findIndex((line) => line.startsWith("m="));
    if (at < 0) at = lines.length;
    lines.splice(at, 0, `a=${name}:${value}`);
    return lines.join(eol);
  }

  function refusalReason(sdp) {
    if (sessionAttribute(sdp, REFUSED) === null) return null;
    const line = sdp.split(/\r?\n/).find((l) => l.startsWith("s=meshrtc refused: "));
    return line ? line.slice("s=meshrtc refused: ".length).trim() : sessionAttribute(sdp, REFUSED);
  }

  function isLoopbackCandidate(candidate) {
    const address = candidate.split(" ")[4] || "";
    return address.startsWith("127.") || address === "::1";
  }

  // The wanted codec first (H.264: packetization-mode=1 before 0), everything else after it.
  function codecOrder(kind, wanted) {
    const capabilities = RTCRtpReceiver.getCapabilities(kind);
    if (!capabilities) throw new Error(`this browser reports no ${kind} codecs`);
    const mime = `${kind}/${wanted}`.toLowerCase();
    const first = capabilities.codecs.filter((c) => c.mimeType.toLowerCase() === mime);
    if (first.length === 0) throw new Error(`this browser cannot use ${wanted}`);
    const mode1 = (c) => ((c.sdpFmtpLine || "").includes("packetization-mode=1") ? 0 : 1);
    first.sort((a, b) => mode1(a) - mode1(b));
    return [...first, ...capabilities.codecs.filter((c) => !first.includes(c))];
  }

  function preferCodec(transceiver) {
    if (!api.codec || transceiver.receiver.track.kind !== "video") return;
    if (typeof transceiver.setCodecPreferences !== "function") return;
    transceiver.setCodecPreferences(codecOrder("video", api.codec));
  }

  // --- signaling (JSON-RPC 2.0 over one WebSocket) ----------------------------------------------

  class RpcError extends Error {
    constructor(code, message) {
      super(`${message} (${code})`);
      this.code = code;
    }
  }

  class Signaling {
    constructor(url, onNotification, onClose) {
      this.url = url;
      this.onNotification = onNotification;
      this.onClose = onClose;
      this.nextId = 1;
      this.pending = new Map();
      this.ws = null;
    }

    open() {
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(this.url);
        this.ws = ws;
        ws.onopen = () => resolve();
        // Without the query: it may hold the token. A refused token also ends up here.
        const where = this.url.split("?")[0];
        ws.onerror = () => reject(new Error(`cannot reach the signaling server at ${where} (or it refused the token)`));
        ws.onmessage = (event) => this.receive(event.data);
        ws.onclose = (event) => {
          for (const { reject: fail } of this.pending.values()) fail(new Error("signaling closed"));
          this.pending.clear();
          if (this.ws === ws) this.onClose(event);
        };
      });
    }

    receive(text) {
      let message;
      try {
        message = JSON.parse(text);
      } catch (err) {
        note(`unparsable signaling message: ${err}`);
        return;
      }
      if (message.id !== undefined && message.id !== null && this.pending.has(message.id)) {
        const { resolve, reject } = this.pending.get(message.id);
        this.pending.delete(message.id);
        if (message.error) reject(new RpcError(message.error.code, message.error.message));
        else resolve(message.result);
      } else if (message.method) {
        this.onNotification(message.method, message.params || {});
      } else if (message.error) {
        note(`signaling error: ${message.error.message}`);
      }
    }

    request(method, params) {
      return new Promise((resolve, reject) => {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
          reject(new Error("signaling is not connected"));
          return;
        }
        const id = this.nextId++;
        this.pending.set(id, { resolve, reject });
        this.ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
      });
    }

    close() {
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.close(1000, "leaving");
    }
  }

  // --- one remote peer ----------------------------------------------------------------------------

  class Link {
    constructor(info) {
      this.id = info.peer_id;
      this.info = info;
      const userData = info.user_data || {};
      this.name = typeof userData.name === "string" && userData.name ? userData.name : this.id;
      // A peer that is not this page (no client marker) is a meshrtc process: the pipeline.
      this.pipeline = userData.client !== CLIENT;
      this.pc = null;
      this.channel = null;
      this.generation = 0;
      this.offerTag = null;
      this.remoteSet = false;
      this.pendingCandidates = [];
      this.everConnected = false;
      this.failures = 0;
      this.retryTimer = null;
      this.attemptTimer = null;
      this.graceTimer = null;
      this.settleTimer = null; // set while its peer is reported gone (peer.left) but media flows
      this.closed = false;
      this.refused = null;
      this.stats = null;
      this.queue = Promise.resolve();
      this.tile = makeTile(this);
    }

    get lower() {
      return api.peerId < this.id; // plain string order: the lower id offers rebuilds
    }

    media() {
      const caps = new Set(this.info.capabilities || ["audio", "video", "data"]);
      return { audio: caps.has("audio"), video: caps.has("video"), data: caps.has("data") };
    }

    // Signals for one link are handled one at a time, in arrival order.
    enqueue(what, task) {
      this.queue = this.queue.then(task).catch((err) => note(`${this.id}: ${what} failed: ${err}`));
      return this.queue;
    }

    build(offerer) {
      this.dropPc();
      const generation = ++this.generation;
      const pc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
      api.builds += 1;
      this.pc = pc;
      this.remoteSet = false;
      this.offerTag = null;
      this.pendingCandidates = [];
      const stream = new MediaStream();
      this.tile.video.srcObject = stream;
      pc.ontrack = (event) => {
        if (generation !== this.generation) return;
        stream.addTrack(event.track);
        this.tile.video.play().catch(() => {});
      };
      pc.onicecandidate = (event) => {
        if (generation !== this.generation) return;
        const c = event.candidate;
        if (c && c.candidate && loopbackOnly && !isLoopbackCandidate(c.candidate)) {
          note(`${this.id}: not signaling ${c.candidate} (ice=loopback)`);
          return;
        }
        if (c && c.candidate) note(`${this.id}: local ${c.candidate}`);
        const p = { from: api.peerId, to: this.id, candidate: c ? c.candidate : "" };
        if (c && c.candidate) {
          if (c.sdpMid !== null) p.sdp_mid = c.sdpMid;
          if (c.sdpMLineIndex !== null) p.sdp_m_line_index = c.sdpMLineIndex;
          if (c.usernameFragment) p.username_fragment = c.usernameFragment;
        } else if (c && c.candidate === "") {
          return; // Chrome's per-generation end marker; the null candidate follows
        }
        signaling.request("peer.ice_candidate", p).catch((err) => note(`${this.id}: candidate: ${err}`));
      };
      pc.onconnectionstatechange = () => {
        if (generation === this.generation) this.onConnectionState(pc.connectionState);
      };
      pc.ondatachannel = (event) => {
        if (generation === this.generation) this.attachChannel(event.channel);
      };
      if (offerer) {
        const media = this.media();
        if (media.audio) addTransceiver(pc, "audio");
        if (media.video) preferCodec(addTransceiver(pc, "video"));
        if (media.data) this.attachChannel(pc.createDataChannel("meshrtc", { ordered: true }));
      }
      clearTimeout(this.attemptTimer);
      const limit = this.everConnected ? RECONNECT_TIMEOUT_MS : CONNECT_TIMEOUT_MS;
      this.attemptTimer = setTimeout(() => {
        if (generation === this.generation && pc.connectionState !== "connected") {
          this.lost(`not connected within ${limit / 1000} s`);
        }
      }, limit);
      this.render();
      return pc;
    }

    async offer() {
      if (this.closed) return;
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      const pc = this.build(true);
      await pc.setLocalDescription(await pc.createOffer());
      const tag = `${api.peerId}-${this.id}-${Date.now().toString(36)}.${this.generation}`;
      this.offerTag = tag;
      const sdp = withSessionAttribute(pc.localDescription.sdp, ATTEMPT, tag);
      note(`${this.id}: offering (attempt ${this.generation})`);
      await signaling.request("peer.offer", { from: api.peerId, to: this.id, sdp });
    }

    async onOffer(sdp) {
      if (this.closed) return;
      const pc0 = this.pc;
      if (pc0 && this.offerTag !== null && !this.remoteSet) {
        if (this.lower) {
          note(`${this.id}: ignoring a colliding offer (we offer)`);
          return;
        }
        note(`${this.id}: colliding offer; dropping ours and answering`);
      }
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      const pc = this.build(false);
      await pc.setRemoteDescription({ type: "offer", sdp });
      this.remoteSet = true;
      for (const transceiver of pc.getTransceivers()) {
        const kind = transceiver.receiver.track.kind;
        const track = localTrack(kind);
        if (track) {
          await transceiver.sender.replaceTrack(track);
          transceiver.sender.setStreams(localStream);
        }
        transceiver.direction = track ? "sendrecv" : "recvonly";
        if (kind === "video") preferCodec(transceiver);
      }
      await pc.setLocalDescription(await pc.createAnswer());
      await this.flushCandidates();
      let answer = pc.localDescription.sdp;
      const tag = sessionAttribute(sdp, ATTEMPT);
      if (tag !== null) answer = withSessionAttribute(answer, ATTEMPT, tag);
      note(`${this.id}: answering (attempt ${this.generation})`);
      await signaling.request("peer.answer", { from: api.peerId, to: this.id, sdp: answer });
    }

    // The remote could not answer our offer (peer.error): give up this link, saying why.
    onPeerError(error) {
      const message = error && typeof error.message === "string" ? error.message : "no reason given";
      if (!this.pc || this.offerTag === null || this.remoteSet) {
        note(`${this.id}: peer.error with no offer outstanding: ${message}`);
        return;
      }
      this.refused = `cannot answer our offer: ${message}`;
      note(`${this.id}: ${this.refused}`);
      this.dropPc();
      this.render();
    }

    // An offer we cannot answer: tell the offerer why rather than leaving it waiting.
    async refuseOffer(err) {
      const message = `the browser cannot answer: ${err}`.slice(0, 1000);
      note(`${this.id}: ${message}`);
      this.dropPc();
      this.render();
      await signaling.request("peer.error", {
        from: api.peerId,
        to: this.id,
        error: { code: UNANSWERABLE_OFFER, message },
      });
    }

    async onAnswer(sdp) {
      const reason = refusalReason(sdp);
      if (reason !== null) {
        this.refused = reason;
        note(`${this.id}: refused: ${reason}`);
        this.dropPc();
        this.render();
        return;
      }
      const tag = sessionAttribute(sdp, ATTEMPT);
      const pc = this.pc;
      if (!pc || this.offerTag === null || this.remoteSet || (tag !== null && tag !== this.offerTag)) {
        note(`${this.id}: ignoring an answer to no outstanding offer`);
        return;
      }
      await pc.setRemoteDescription({ type: "answer", sdp });
      this.remoteSet = true;
      await this.flushCandidates();
    }

    async onCandidate(p) {
      const init = p.candidate
        ? {
            candidate: p.candidate,
            sdpMid: p.sdp_mid ?? null,
            sdpMLineIndex: p.sdp_m_line_index ?? (p.sdp_mid === undefined ? 0 : null),
            usernameFragment: p.username_fragment ?? null,
          }
        : null;
      if (!this.pc || !this.remoteSet) {
        this.pendingCandidates.push(init);
        return;
      }
      await this.addCandidate(init);
    }

    async flushCandidates() {
      const pending = this.pendingCandidates;
      this.pendingCandidates = [];
      for (const init of pending) await this.addCandidate(init);
    }

    async addCandidate(init) {
      try {
        await this.pc.addIceCandidate(init === null ? undefined : init);
      } catch (err) {
        note(`${this.id}: candidate refused: ${err}`); // a stale one from an older attempt
      }
    }

    attachChannel(channel) {
      this.channel = channel;
      channel.onopen = () => {
        this.render();
        updateControls();
      };
      channel.onclose = () => {
        this.render();
        updateControls();
      };
      channel.onmessage = (event) => {
        const text = typeof event.data === "string" ? event.data : `[${event.data.byteLength ?? event.data.size} bytes]`;
        const entry = { kind: this.pipeline ? "echo" : "chat", from: this.id, text, at: Date.now() };
        if (this.pipeline) {
          api.echoes.push(entry);
          api.lastEcho = entry;
        }
        addMessage(entry);
      };
    }

    // Up now: worth keeping across a signaling outage (its media needs no server).
    alive() {
      return !this.closed && this.pc !== null && this.pc.connectionState === "connected";
    }

    // Its incarnation is the one this link was built with: the same client instance.
    sameInstance(info) {
      return typeof info.incarnation === "string" && info.incarnation === this.info.incarnation;
    }

    onConnectionState(state) {
      note(`${this.id}: connection ${state}`);
      clearTimeout(this.graceTimer);
      if (this.settleTimer && state !== "connected") {
        // Gone from the session, and now from the media path too: nothing left to keep.
        note(`${this.id}: held link lost its media; closing it`);
        dropLink(this.id, this);
        return;
      }
      if (state === "connected") {
        clearTimeout(this.attemptTimer);
        this.everConnected = true;
        this.failures = 0;
      } else if (state === "failed") {
        this.lost("the connection failed");
      } else if (state === "disconnected") {
        const generation = this.generation;
        this.graceTimer = setTimeout(() => {
          if (generation === this.generation && this.pc && this.pc.connectionState === "disconnected") {
            this.lost(`disconnected for ${DISCONNECTED_GRACE_MS / 1000} s`);
          }
        }, DISCONNECTED_GRACE_MS);
      }
      this.render();
      renderPeerList();
    }

    // The link is gone: the lower id offers again after a backoff, the higher id waits longer.
    lost(reason) {
      if (this.closed || this.refused || this.retryTimer) return;
      this.failures += 1;
      note(`${this.id}: lost (${reason}); attempt ${this.failures} of ${BACKOFF_TRIES}`);
      if (this.failures > BACKOFF_TRIES) {
        this.dropPc();
        this.render();
        return;
      }
      const backoff = this.failures === 1 ? 0 : Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** (this.failures - 2));
      const delay = backoff * (0.75 + 0.5 * Math.random()) + (this.lower ? 0 : POLITE_WAIT_MS);
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        if (!this.closed && (!this.pc || this.pc.connectionState !== "connected")) {
          this.enqueue("re-offer", () => this.offer());
        }
      }, delay);
    }

    dropPc() {
      if (this.pc) {
        this.pc.onicecandidate = this.pc.ontrack = this.pc.onconnectionstatechange = null;
        this.pc.close();
      }
      this.pc = null;
      this.channel = null;
      updateControls();
    }

    close() {
      this.closed = true;
      clearTimeout(this.settleTimer);
      clearTimeout(this.retryTimer);
      clearTimeout(this.attemptTimer);
      clearTimeout(this.graceTimer);
      this.dropPc();
      this.tile.root.remove();
    }

    linkState() {
      if (this.refused) return "refused";
      if (!this.pc) return this.closed ? "closed" : this.failures > BACKOFF_TRIES ? "failed" : "waiting";
      return this.pc.connectionState;
    }

    render() {
      const state = this.linkState();
      this.tile.state.textContent = state;
      this.tile.state.className = `state ${state}`;
    }

    describe() {
      return {
        peerId: this.id,
        name: this.name,
        pipeline: this.pipeline,
        state: this.linkState(),
        connectionState: this.pc ? this.pc.connectionState : null,
        iceConnectionState: this.pc ? this.pc.iceConnectionState : null,
        signalingState: this.pc ? this.pc.signalingState : null,
        dataChannel: this.channel ? this.channel.readyState : null,
        generation: this.generation,
        failures: this.failures,
        refused: this.refused,
      };
    }
  }

  function localTrack(kind) {
    if (!localStream) return null;
    return (kind === "audio" ? localStream.getAudioTracks() : localStream.getVideoTracks())[0] || null;
  }

  function addTransceiver(pc, kind) {
    const track = localTrack(kind);
    if (track) return pc.addTransceiver(track, { direction: "sendrecv", streams: [localStream] });
    return pc.addTransceiver(kind, { direction: "recvonly" });
  }

  // --- the page -----------------------------------------------------------------------------------

  function makeTile(link) {
    const root = $("tile-template").content.firstElementChild.cloneNode(true);
    root.dataset.peer = link.id;
    const tile = {
      root,
      video: root.querySelector("video"),
      state: root.querySelector(".state"),
      stat: (name) => root.querySelector(`[data-stat="${name}"]`),
    };
    root.querySelector(".name").textContent = link.name;
    const badge = root.querySelector(".badge");
    badge.textContent = link.pipeline ? "pipeline" : "browser";
    badge.classList.add(link.pipeline ? "pipeline" : "browser");
    root.title = link.id;
    // The pipeline's tile first: it is what this page is for.
    if (link.pipeline) $("tile-local").after(root);
    else $("tiles").append(root);
    return tile;
  }

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = kind || "";
  }

  function setState(state) {
    api.state = state;
    updateControls();
  }

  function updateControls() {
    const live = api.state === "joined" || api.state === "reconnecting";
    const busy = api.state === "joining";
    $("join").disabled = live || busy;
    $("leave").disabled = !live && !busy;
    for (const id of ["session", "name", "codec"]) $(id).disabled = live || busy;
    const open = [...links.values()].some((l) => l.channel && l.channel.readyState === "open");
    $("message").disabled = !open;
    $("send").disabled = !open;
  }

  function renderPeerList() {
    const list = $("peer-list");
    list.textContent = "";
    if (api.sessionPeers.length === 0) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = api.state === "joined" ? "nobody else yet" : "not joined";
      list.append(li);
      return;
    }
    for (const info of api.sessionPeers) {
      const link = links.get(info.peer_id);
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = (info.user_data && info.user_data.name) || info.peer_id;
      name.title = info.peer_id;
      const badge = document.createElement("span");
      const pipeline = !info.user_data || info.user_data.client !== CLIENT;
      badge.className = `badge ${pipeline ? "pipeline" : "browser"}`;
      badge.textContent = pipeline ? "pipeline" : "browser";
      const state = document.createElement("span");
      state.className = "link";
      state.textContent = link ? link.linkState() : "-";
      li.append(name, badge, state);
      list.append(li);
    }
  }

  function addMessage(entry) {
    api.messages.push(entry);
    if (api.messages.length > MAX_MESSAGES) api.messages.shift();
    if (api.echoes.length > MAX_MESSAGES) api.echoes.shift();
    const li = document.createElement("li");
    li.className = entry.kind;
    const who = document.createElement("span");
    who.className = "who";
    const labels = { sent: "you", echo: `echo from ${entry.from}`, chat: entry.from, system: "" };
    who.textContent = labels[entry.kind] ?? entry.from;
    const text = document.createElement("span");
    text.textContent = entry.text;
    li.append(who, text);
    const box = $("messages");
    box.append(li);
    while (box.children.length > MAX_MESSAGES) box.firstElementChild.remove();
    box.scrollTop = box.scrollHeight;
  }

  function sendText(text) {
    const to = [];
    for (const link of links.values()) {
      if (link.channel && link.channel.readyState === "open") {
        link.channel.send(text);
        to.push(link.id);
      }
    }
    if (to.length) addMessage({ kind: "sent", from: api.peerId, text, to, at: Date.now() });
    return to;
  }

  // --- stats (RTCPeerConnection.getStats) -----------------------------------------------------------

  function summarize(report) {
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    const codecOf = (s) => (s.codecId && byId.get(s.codecId) ? byId.get(s.codecId).mimeType : null);
    const out = { audioIn: null, videoIn: null, audioOut: null, videoOut: null, rttMs: null, candidatePair: null };
    let remoteRtt = null;
    for (const s of byId.values()) {
      if (s.type === "inbound-rtp") {
        const received = s.packetsReceived || 0;
        const lost = Math.max(0, s.packetsLost || 0);
        const base = {
          codec: codecOf(s),
          packetsReceived: received,
          packetsLost: s.packetsLost || 0,
          lossRate: received + lost ? lost / (received + lost) : 0,
          jitterMs: s.jitter !== undefined ? 1000 * s.jitter : null,
          bytesReceived: s.bytesReceived || 0,
        };
        if (s.kind === "audio") {
          out.audioIn = Object.assign(base, {
            totalSamplesReceived: s.totalSamplesReceived || 0,
            concealedSamples: s.concealedSamples || 0,
            totalAudioEnergy: s.totalAudioEnergy || 0,
            audioLevel: s.audioLevel || 0,
          });
        } else {
          out.videoIn = Object.assign(base, {
            framesDecoded: s.framesDecoded || 0,
            keyFramesDecoded: s.keyFramesDecoded || 0,
            framesPerSecond: s.framesPerSecond || 0,
            frameWidth: s.frameWidth || 0,
            frameHeight: s.frameHeight || 0,
            decoderImplementation: s.decoderImplementation || null,
          });
        }
      } else if (s.type === "outbound-rtp") {
        const base = { codec: codecOf(s), packetsSent: s.packetsSent || 0, bytesSent: s.bytesSent || 0 };
        if (s.kind === "audio") out.audioOut = base;
        else out.videoOut = Object.assign(base, { framesEncoded: s.framesEncoded || 0, encoderImplementation: s.encoderImplementation || null });
      } else if (s.type === "remote-inbound-rtp" && s.roundTripTime !== undefined) {
        remoteRtt = 1000 * s.roundTripTime;
      } else if (s.type === "transport" && s.selectedCandidatePairId) {
        const pair = byId.get(s.selectedCandidatePairId);
        if (pair) {
          const local = byId.get(pair.localCandidateId) || {};
          const remote = byId.get(pair.remoteCandidateId) || {};
          out.candidatePair = {
            local: `${local.address}:${local.port} ${local.protocol} ${local.candidateType}`,
            remote: `${remote.address}:${remote.port} ${remote.protocol} ${remote.candidateType}`,
          };
          if (pair.currentRoundTripTime !== undefined) out.rttMs = 1000 * pair.currentRoundTripTime;
        }
      }
    }
    if (out.rttMs === null) out.rttMs = remoteRtt;
    return out;
  }

  async function collectStats() {
    const result = {};
    for (const link of links.values()) {
      if (!link.pc) continue;
      try {
        link.stats = summarize(await link.pc.getStats());
        result[link.id] = link.stats;
      } catch (err) {
        note(`${link.id}: getStats failed: ${err}`);
      }
    }
    return result;
  }

  const fmt = (v, digits = 0, unit = "") => (v === null || v === undefined ? "-" : `${v.toFixed(digits)}${unit}`);

  function renderStats() {
    for (const link of links.values()) {
      const s = link.stats;
      if (!s) continue;
      const t = link.tile;
      const codec = (x) => (x && x.codec ? x.codec.split("/")[1] : "-");
      t.stat("codec").textContent = `${codec(s.audioIn)} / ${codec(s.videoIn)}`;
      t.stat("rtt").textContent = fmt(s.rttMs, 1, " ms");
      const loss = [s.audioIn, s.videoIn].filter(Boolean).map((x) => 100 * x.lossRate);
      t.stat("loss").textContent = loss.length ? `${fmt(Math.max(...loss), 1)} %` : "-";
      t.stat("jitter").textContent = s.audioIn ? fmt(s.audioIn.jitterMs, 1, " ms") : "-";
      t.stat("video").textContent = s.videoIn
        ? `${s.videoIn.frameWidth}x${s.videoIn.frameHeight}, ${s.videoIn.framesDecoded} frames decoded`
        : "-";
      t.stat("fps").textContent = s.videoIn ? fmt(s.videoIn.framesPerSecond) : "-";
      t.stat("audio").textContent = s.audioIn ? `${(s.audioIn.totalSamplesReceived / 48000).toFixed(1)} s` : "-";
    }
  }

  function snapshot() {
    const peers = {};
    for (const link of links.values()) peers[link.id] = link.describe();
    return {
      state: api.state,
      peerId: api.peerId,
      sessionId: api.sessionId,
      error: api.error,
      codec: api.codec,
      media: Object.assign({}, api.media),
      sessionPeers: api.sessionPeers.map((p) => p.peer_id),
      peers,
      messages: api.messages.length,
      lastEcho: api.lastEcho,
      builds: api.builds,
    };
  }

  // --- joining and leaving ------------------------------------------------------------------------

  function slug(name) {
    const s = name.trim().replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 56);
    return s || "guest";
  }

  async function openMedia(width, height, fps) {
    const video = { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: fps } };
    const attempts = [{ audio: true, video }, { audio: true, video: false }, { audio: false, video }];
    let lastError = null;
    for (const constraints of attempts) {
      try {
        return await navigator.mediaDevices.getUserMedia(constraints);
      } catch (err) {
        lastError = err;
      }
    }
    api.media.error = String(lastError);
    note(`no camera or microphone (${lastError}); joining to receive only`);
    return null;
  }

  async function join(options) {
    if (api.state === "joining" || api.state === "joined" || api.state === "reconnecting") return snapshot();
    const session = options.session || $("session").value || "default";
    const name = (options.name || $("name").value || "").trim() || "guest";
    const codec = options.codec ?? $("codec").value;
    api.error = null;
    try {
      if (!ID_PATTERN.test(session)) throw new Error(`session ${JSON.stringify(session)} must match ${ID_PATTERN}`);
      api.codec = codec ? String(codec).toUpperCase() : null;
      if (api.codec) codecOrder("video", api.codec); // fail now if the browser lacks it
      setState("joining");
      setStatus("Opening camera and microphone…");
      const width = Number(params.get("width")) || 640;
      const height = Number(params.get("height")) || 480;
      const fps = Number(params.get("fps")) || 30;
      if (!localStream) localStream = await openMedia(width, height, fps);
      api.media.audio = Boolean(localTrack("audio"));
      api.media.video = Boolean(localTrack("video"));
      $("local-video").srcObject = localStream;
      const stun = params.get("stun");
      iceServers = stun ? [{ urls: stun }] : [];
      loopbackOnly = params.get("ice") === "loopback";
      // A token names the peer and the session it admits to (docs/security.md): use those.
      const claims = tokenClaims(params.get("token"));
      await connect(
        claims ? claims.session : session,
        name,
        claims ? claims.sub : options.id || params.get("id") || slug(name),
      );
    } catch (err) {
      api.error = String(err && err.message ? err.message : err);
      setState("error");
      setStatus(`Error: ${api.error}`, "error");
      note(`join failed: ${api.error}`);
    }
    return snapshot();
  }

  // The claims of this page's `token` query parameter (unverified: the server verifies), or null.
  function tokenClaims(token) {
    if (!token) return null;
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
      if (typeof claims.sub === "string" && typeof claims.session === "string") return claims;
    } catch (err) {
      // fall through: the server will refuse it and say why
    }
    return null;
  }

  async function connect(session, name, peerId) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const base = new URL(params.get("ws") || `${scheme}//${location.host}/ws`, location.href);
    // The server checks the token at the WebSocket upgrade: it travels in the URL's query.
    if (params.get("token")) base.searchParams.set("token", params.get("token"));
    const url = base.href;
    setStatus(`Connecting to ${base.origin}${base.pathname}…`);
    const sig = new Signaling(url, onNotification, onSignalingClosed);
    signaling = sig;
    await sig.open();
    let result = null;
    for (let attempt = 0; result === null; attempt++) {
      const id = attempt === 0 ? peerId : `${peerId.slice(0, 58)}-${Math.random().toString(36).slice(2, 6)}`;
      const announce = {
        peer_id: id,
        capabilities: ["audio", "video", "data"],
        session_id: session,
        user_data: { name, client: CLIENT },
        incarnation: INCARNATION,
      };
      // Our secret from the last announce of this id: the server holds a dropped id for it.
      if (resume !== null && resume.peerId === id) announce.resume = resume.secret;
      try {
        result = await sig.request("peer.announce", announce);
      } catch (err) {
        const renamable = !params.get("token"); // a token admits exactly one peer id
        if (!(err instanceof RpcError) || err.code !== -32006 || !renamable || attempt >= 3) throw err;
        note(`peer id ${id} is taken; trying another`);
      }
    }
    api.peerId = result.peer_id;
    resume = typeof result.resume === "string" ? { peerId: result.peer_id, secret: result.resume } : null;
    api.sessionId = result.session_id;
    api.sessionPeers = result.peers.slice();
    setState("joined");
    const receiveOnly = api.media.audio || api.media.video ? "" : " (receive only: no camera or microphone)";
    setStatus(`Joined session ${api.sessionId} as ${api.peerId}${receiveOnly}`, "joined");
    note(`joined ${api.sessionId} as ${api.peerId}; ${result.peers.length} other peer(s)`);
    // The newcomer offers to everyone already there, except to the same client instances we still
    // have a connected link with (after our own signaling drop). A connected link to a peer not
    // listed stays too: after a server restart the others come back one by one.
    const listed = new Set(result.peers.map((info) => info.peer_id));
    for (const [id, link] of links) {
      if (!listed.has(id) && !link.alive()) dropLink(id, link);
    }
    for (const info of result.peers) {
      const old = links.get(info.peer_id);
      if (old && old.alive() && old.sameInstance(info)) {
        clearTimeout(old.settleTimer);
        old.settleTimer = null;
        old.info = info;
        note(`${info.peer_id}: link kept across our re-announce`);
        continue;
      }
      if (old) old.close();
      const link = new Link(info);
      links.set(info.peer_id, link);
      link.enqueue("offer", () => link.offer());
    }
    renderPeerList();
    clearInterval(statsTimer);
    statsTimer = setInterval(() => collectStats().then(renderStats), 1000);
  }

  function onNotification(method, p) {
    if (method === "peer.joined") {
      api.sessionPeers = api.sessionPeers.filter((x) => x.peer_id !== p.peer_id).concat([p]);
      const old = links.get(p.peer_id);
      if (old && old.alive() && old.sameInstance(p)) {
        // The same instance announcing again after its signaling dropped: its media never stopped.
        clearTimeout(old.settleTimer);
        old.settleTimer = null;
        old.info = p;
        note(`${p.peer_id} announced again; link kept`);
      } else {
        if (old) old.close(); // a new instance (or a dead link): its old connection is gone
        links.set(p.peer_id, new Link(p)); // it will offer to us
        note(`${p.peer_id} joined`);
      }
    } else if (method === "peer.left") {
      api.sessionPeers = api.sessionPeers.filter((x) => x.peer_id !== p.peer_id);
      const link = links.get(p.peer_id);
      if (link && link.alive() && p.reason !== "disconnect") {
        // Its signaling dropped, not necessarily its media: it may resume within the grace.
        clearTimeout(link.settleTimer);
        link.settleTimer = setTimeout(() => dropLink(p.peer_id, link), SETTLE_MS);
        note(`${p.peer_id} left (${p.reason}); keeping its connected link for ${SETTLE_MS / 1000} s`);
      } else {
        if (link) dropLink(p.peer_id, link);
        note(`${p.peer_id} left (${p.reason})`);
      }
    } else if (method === "peer.error") {
      const link = links.get(p.from);
      if (link) link.enqueue("error", () => link.onPeerError(p.error));
    } else if (method === "peer.offer" || method === "peer.answer" || method === "peer.ice_candidate") {
      let link = links.get(p.from);
      if (!link && method === "peer.offer") {
        const info = api.sessionPeers.find((x) => x.peer_id === p.from) || { peer_id: p.from, capabilities: ["audio", "video", "data"] };
        link = new Link(info);
        links.set(p.from, link);
      }
      if (!link) return;
      if (method === "peer.offer") {
        link.enqueue("answer", () => link.onOffer(p.sdp).catch((err) => link.refuseOffer(err)));
      }
      else if (method === "peer.answer") link.enqueue("answer", () => link.onAnswer(p.sdp));
      else link.enqueue("candidate", () => link.onCandidate(p));
    } else {
      note(`unexpected notification ${method}`);
    }
    renderPeerList();
    updateControls();
  }

  function dropLink(id, link) {
    link.close();
    if (links.get(id) === link) links.delete(id);
    renderPeerList();
  }

  function closeLinks() {
    for (const link of links.values()) link.close();
    links.clear();
    api.sessionPeers = [];
  }

  // Media already flowing keeps going while we are away; once back we announce again and keep the
  // links that are still connected (as PeerManager does after Reconnected), offering to the rest.
  function onSignalingClosed(event) {
    if (api.state !== "joined") return;
    note(`signaling closed (${event.code}); reconnecting`);
    setState("reconnecting");
    setStatus("Signaling lost; reconnecting…", "error");
    const session = api.sessionId;
    const name = $("name").value || api.peerId;
    const peerId = api.peerId;
    let delay = 500;
    const retry = () => {
      if (api.state !== "reconnecting") return;
      connectAgain(session, name, peerId).catch((err) => {
        note(`reconnect failed: ${err}`);
        delay = Math.min(5000, delay * 2);
        setTimeout(retry, delay);
      });
    };
    setTimeout(retry, delay);
  }

  async function connectAgain(session, name, peerId) {
    await connect(session, name, peerId);
  }

  async function leave() {
    const sig = signaling;
    signaling = null;
    clearInterval(statsTimer);
    if (sig && api.peerId && api.state === "joined") {
      try {
        await sig.request("peer.disconnect", { peer_id: api.peerId });
      } catch (err) {
        note(`disconnect: ${err}`);
      }
    }
    setState("left");
    if (sig) sig.close();
    closeLinks();
    if (localStream) for (const track of localStream.getTracks()) track.stop();
    localStream = null;
    $("local-video").srcObject = null;
    setStatus("Left the session");
    renderPeerList();
    return snapshot();
  }

  // --- wiring ---------------------------------------------------------------------------------------

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    join({});
  });
  $("leave").addEventListener("click", () => leave());
  $("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("message");
    if (input.value) sendText(input.value);
    input.value = "";
  });
  window.addEventListener("pagehide", () => {
    if (signaling) signaling.close();
  });

  if (params.get("session")) $("session").value = params.get("session");
  if (params.get("name")) $("name").value = params.get("name");
  if (params.get("codec")) $("codec").value = params.get("codec").toUpperCase();
  updateControls();
  if (params.get("autojoin") === "1") join({});
})();
