// The browser test of the web client: Debian's headless Chromium driven by playwright-core
// against a real `chorus serve` (tests/tests/web_client.rs starts it and runs this file).
//
//   node tests/web/browser.test.mjs <server url> <artifact directory>
//
// alice and bob log in from two browser contexts and chat; bob goes offline while alice sends
// and comes back to every message in order (filled from /events); edits, recalls, typing, read
// marks, a group with history loaded by scrolling back, mutes, blocks, pins, a reply with a
// mention and a forward, reactions, a message lifetime, group roles and a rename, leaving a
// group, a Chinese search, and files (an image shown inline, a download link, a refused type).
// Every wait is for
// a condition in the page (playwright's waiting locators and waitForFunction), never a sleep.
// Screenshots are saved in the artifact directory. Exit code 0 when every step passed.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, artifacts] = process.argv.slice(2);
if (!url || !artifacts) {
  console.error("usage: node browser.test.mjs <server url> <artifact directory>");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const WAIT_MS = 15_000;
const DM = "dm:alice:bob";
/** A valid 2×2 RGB PNG (red and blue pixels). */
const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEklEQVR4nGP4z8DA0PCfAUIBACFyBP1TVaZ3AAAAAElFTkSuQmCC", "base64");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});

let failed = false;
async function step(name, body) {
  const started = Date.now();
  try {
    await body();
    console.log(`ok - ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failed = true;
    console.log(`not ok - ${name}\n${error.stack ?? error}`);
    throw error;
  }
}

async function login(user) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("pageerror", (error) => console.log(`${user}: page error: ${error.message}`));
  page.on("dialog", (dialog) => {
    console.log(`${user}: dialog: ${dialog.message()}`);
    dialog.dismiss();
  });
  await page.goto(url);
  await page.fill("#user-name", user);
  await page.click("#join");
  await page.locator('#status[data-state="open"]').waitFor();
  return { user, context, page };
}

const conversationItem = (who, id) => who.page.locator(`#conversations li[data-conversation="${id}"]`);
const messageTexts = (who) => who.page.locator("#messages li.message .text").allTextContents();

/** Waits until the open conversation's message texts are exactly `expected`, in order. */
async function expectMessages(who, expected) {
  try {
    await who.page.waitForFunction(
      (texts) => {
        const shown = [...document.querySelectorAll("#messages li.message .text")].map((node) => node.textContent);
        return JSON.stringify(shown) === JSON.stringify(texts);
      },
      expected,
      { timeout: WAIT_MS },
    );
  } catch (error) {
    throw new Error(`${who.user} shows ${JSON.stringify(await messageTexts(who))}, expected ${JSON.stringify(expected)}\n${error.message}`);
  }
}

async function send(who, text) {
  await who.page.fill("#message-input", text);
  await who.page.click("#send");
}

/** Waits until the open conversation shows the image `name`, loaded (its natural width > 0). */
async function expectImageLoaded(who, name, selector = "#messages li.message") {
  try {
    // every render draws the messages again: each try looks the image up afresh
    await who.page.waitForFunction(
      ([within, alt]) => [...document.querySelectorAll(`${within} .attachment img`)].some((image) => image.alt === alt && image.complete && image.naturalWidth > 0),
      [selector, name],
      { timeout: WAIT_MS },
    );
  } catch (error) {
    const images = await who.page.$$eval("#messages img", (found) => found.map((image) => ({ alt: image.alt, src: image.src, complete: image.complete, width: image.naturalWidth })));
    throw new Error(`${who.user}: image ${name} did not load; images: ${JSON.stringify(images)}\n${error.message}`);
  }
}

/** Sends from the UI and waits for the ack (the message has its seq, nothing is pending). */
async function sendAcked(who, text) {
  await send(who, text);
  await who.page.locator("#messages li.message.mine:not(.pending) .text", { hasText: text }).last().waitFor();
}

try {
  const alice = await login("alice");
  const bob = await login("bob");
  const dmTexts = [];

  await step("alice opens a direct conversation and bob receives it live", async () => {
    await alice.page.fill("#peer", "bob");
    await alice.page.press("#peer", "Enter");
    await alice.page.locator("#chat-title", { hasText: "bob" }).waitFor();
    await sendAcked(alice, "hi bob");
    dmTexts.push("hi bob");
    await conversationItem(bob, DM).locator(".unread", { hasText: "1" }).waitFor();
    await conversationItem(bob, DM).click();
    await expectMessages(bob, dmTexts);
  });

  await step("bob's reply reaches alice; read marks and typing show", async () => {
    // bob opened the conversation, so alice's message shows as read
    await alice.page.locator("#messages li.message.mine.read", { hasText: "hi bob" }).waitFor();
    await bob.page.type("#message-input", "你好");
    await alice.page.locator("#typing", { hasText: "bob is typing" }).waitFor();
    await bob.page.fill("#message-input", "");
    await sendAcked(bob, "你好 alice，我们明天在北京开会");
    dmTexts.push("你好 alice，我们明天在北京开会");
    await expectMessages(alice, dmTexts);
    await expectMessages(bob, dmTexts);
  });

  await step("bob goes offline; alice's messages and bob's queued one all arrive in order once he is back", async () => {
    await bob.context.setOffline(true);
    await bob.page.locator('#status[data-state="paused"]').waitFor();
    const whileAway = ["while you were away 1", "while you were away 2", "while you were away 3"];
    for (const text of whileAway) await sendAcked(alice, text);
    // bob writes while offline: it waits in his outbox
    await send(bob, "written offline");
    await bob.page.locator("#messages li.message.pending", { hasText: "written offline" }).waitFor();
    await expectMessages(bob, [...dmTexts, "written offline"]);

    await bob.context.setOffline(false);
    await bob.page.locator('#status[data-state="open"]').waitFor();
    dmTexts.push(...whileAway, "written offline");
    await expectMessages(bob, dmTexts);
    await expectMessages(alice, dmTexts);
    await bob.page.locator("#messages li.message.mine:not(.pending)", { hasText: "written offline" }).waitFor();
    // what bob missed came from /events (the gap fill), not live
    const origins = await bob.page.$$eval("#messages li.message", (items) =>
      items.filter((item) => item.textContent.includes("while you were away")).map((item) => item.dataset.origin),
    );
    if (JSON.stringify(origins) !== JSON.stringify(["fill", "fill", "fill"])) {
      throw new Error(`missed messages should be gap-filled, origins were ${JSON.stringify(origins)}`);
    }
    // seqs are contiguous and in order on both sides
    for (const who of [alice, bob]) {
      const seqs = await who.page.$$eval("#messages li.message", (items) => items.map((item) => Number(item.dataset.seq)));
      const expected = seqs.map((_, index) => index + 1);
      if (JSON.stringify(seqs) !== JSON.stringify(expected)) throw new Error(`${who.user}: seqs ${seqs}`);
    }
  });

  await step("an edit and a recall by alice show on bob's page", async () => {
    const edited = alice.page.locator("#messages li.message.mine", { hasText: "while you were away 2" });
    await edited.hover();
    await edited.locator("button.edit").click();
    await alice.page.fill("#message-input", "while you were away 2 (edited)");
    await alice.page.click("#send");
    const recalled = alice.page.locator("#messages li.message.mine", { hasText: "while you were away 3" });
    await recalled.hover();
    await recalled.locator("button.recall").click();
    dmTexts[dmTexts.indexOf("while you were away 2")] = "while you were away 2 (edited)";
    dmTexts[dmTexts.indexOf("while you were away 3")] = "message recalled";
    await expectMessages(bob, dmTexts);
    await expectMessages(alice, dmTexts);
    await bob.page.locator("#messages li.message.recalled").waitFor();
    await bob.page.locator("#messages li.message", { hasText: "(edited)" }).locator(".meta", { hasText: "edited" }).waitFor();
  });

  await step("a group, and its history loads when bob scrolls back", async () => {
    await alice.page.click("text=New group");
    await alice.page.fill("#group-name", "team");
    await alice.page.fill("#group-members", "bob");
    await alice.page.click("#group-form button");
    await alice.page.locator("#chat-title", { hasText: "team" }).waitFor();
    await alice.page.locator("#messages li.notice", { hasText: "alice created team" }).waitFor();
    const history = Array.from({ length: 45 }, (_, index) => `history ${index + 1}`);
    // sent at once through the page's client library (the UI path is covered above); the
    // library resends anything the rate limiter refuses (burst 40 per connection), with the same
    // client message id, so a resent message takes a later seq than those accepted meanwhile:
    // what every page shows is the seq order of the acks
    const seqs = await alice.page.evaluate(
      (texts) => Promise.all(texts.map((text) => window.chorus.client.send("g:team", text).acked.then((ack) => ack.seq))),
      history,
    );
    const sorted = [...seqs].sort((left, right) => left - right);
    if (sorted.some((seq, index) => seq !== index + 2)) throw new Error(`acked seqs are not 2..46: ${sorted}`);
    const inSeqOrder = history.map((text, index) => [seqs[index], text]).sort(([left], [right]) => left - right).map(([, text]) => text);
    await conversationItem(bob, "g:team").waitFor();
    // a fresh page: the group's past is history now, loaded page by page
    await bob.page.reload();
    await bob.page.locator('#status[data-state="open"]').waitFor();
    // the server's unread count: alice's 45 messages, not the creation event
    await conversationItem(bob, "g:team").locator(".unread", { hasText: /^45$/ }).waitFor();
    await conversationItem(bob, "g:team").click();
    await bob.page.locator("#messages li.message", { hasText: inSeqOrder.at(-1) }).waitFor();
    const firstShown = await bob.page.locator("#messages li.message .text").first().textContent();
    if (firstShown === inSeqOrder[0]) throw new Error("the whole history was loaded at once");
    const historyOne = bob.page.locator("#messages li.message .text", { hasText: new RegExp(`^${inSeqOrder[0]}$`) });
    for (let page = 0; page < 5 && (await historyOne.count()) === 0; page++) {
      const before = await bob.page.locator("#messages li").count();
      await bob.page.locator("#messages").evaluate((list) => {
        list.scrollTop = 0;
      });
      await bob.page.waitForFunction((count) => document.querySelectorAll("#messages li").length > count, before);
    }
    await expectMessages(bob, inSeqOrder);
  });

  await step("bob mutes the group on one page; his other page and a reload show it, delivery goes on", async () => {
    const bobPhone = await login("bob");
    await conversationItem(bob, "g:team").click();
    await bob.page.locator("#mute-toggle", { hasText: "Mute" }).click();
    await bob.page.locator("#mute-toggle", { hasText: "Unmute" }).waitFor();
    await conversationItem(bob, "g:team").locator(".muted").waitFor();
    await conversationItem(bobPhone, "g:team").locator(".muted").waitFor();
    await sendAcked(alice, "still delivered when muted");
    await bob.page.locator("#messages li.message", { hasText: "still delivered when muted" }).waitFor();
    await bobPhone.page.reload();
    await bobPhone.page.locator('#status[data-state="open"]').waitFor();
    await conversationItem(bobPhone, "g:team").locator(".muted").waitFor();
    await bob.page.locator("#mute-toggle", { hasText: "Unmute" }).click();
    await bob.page.locator("#mute-toggle", { hasText: "Mute" }).waitFor();
    await conversationItem(bobPhone, "g:team").locator(".muted").waitFor({ state: "detached" });
    await bobPhone.context.close();
  });

  await step("bob blocks alice: her next message is refused with a clear code; unblocked, it goes through", async () => {
    await conversationItem(bob, DM).click();
    await bob.page.locator("#block-toggle", { hasText: "Block alice" }).click();
    await bob.page.locator("#block-toggle", { hasText: "Unblock alice" }).waitFor();
    await conversationItem(alice, DM).click();
    const refused = alice.page.waitForEvent("dialog");
    await send(alice, "are you there?");
    const dialog = await refused;
    if (!dialog.message().includes("(blocked)")) throw new Error(`unexpected refusal: ${dialog.message()}`);
    await alice.page.locator("#messages li.message.pending").waitFor({ state: "detached" });
    await bob.page.locator("#block-toggle", { hasText: "Unblock alice" }).click();
    await bob.page.locator("#block-toggle", { hasText: "Block alice" }).waitFor();
    await sendAcked(alice, "hello again");
    dmTexts.push("hello again");
    await bob.page.locator("#messages li.message", { hasText: "hello again" }).waitFor();
  });

  await step("alice pins a message: bob sees it in the pinned bar; unpinned, it is gone", async () => {
    await alice.page.locator("#messages li.message", { hasText: "hello again" }).locator("button.pin", { hasText: "pin" }).click();
    await bob.page.locator("#pins li", { hasText: "hello again" }).waitFor();
    await alice.page.locator("#pins li", { hasText: "hello again" }).waitFor();
    await bob.page.locator("#messages li.notice", { hasText: "alice pinned" }).waitFor();
    await bob.page.locator("#messages li.message", { hasText: "hello again" }).locator("button.pin", { hasText: "unpin" }).click();
    await alice.page.locator("#pins").waitFor({ state: "hidden" });
  });

  await step("bob replies in the group naming @alice: she sees a mention count and the quote, which jumps to the original; she forwards the reply to bob", async () => {
    await conversationItem(bob, "g:team").click();
    const original = bob.page.locator("#messages li.message", { hasText: "still delivered when muted" });
    await original.locator("button.reply").click();
    await bob.page.locator("#replying", { hasText: "still delivered when muted" }).waitFor();
    await sendAcked(bob, "@alice got it");
    await conversationItem(alice, "g:team").locator(".mention-count", { hasText: "@1" }).waitFor();
    await conversationItem(alice, "g:team").click();
    const reply = alice.page.locator("#messages li.message.mentions-me", { hasText: "@alice got it" });
    await reply.locator(".reply-quote", { hasText: "alice: still delivered when muted" }).click();
    await alice.page.locator("#messages li.message.highlight", { hasText: "still delivered when muted" }).waitFor();
    await conversationItem(alice, "g:team").locator(".mention-count").waitFor({ state: "detached" });
    await reply.locator("button.forward").click();
    await alice.page.fill("#forward-to", "bob");
    await alice.page.click("#forward-form button[type=submit]");
    await conversationItem(bob, DM).click();
    const copy = bob.page.locator("#messages li.message", { hasText: "@alice got it" });
    await copy.locator(".forwarded", { hasText: "forwarded from bob" }).waitFor();
    dmTexts.push("@alice got it");
  });

  await step("alice and bob react to the reply: each sees the count and whether they reacted; bob takes his back", async () => {
    await conversationItem(bob, "g:team").click();
    const onAlice = alice.page.locator("#messages li.message", { hasText: "@alice got it" });
    const onBob = bob.page.locator("#messages li.message", { hasText: "@alice got it" });
    await onAlice.locator('button.add-reaction[data-emoji="👍"]').click();
    await onAlice.locator('button.reaction.mine[data-emoji="👍"]', { hasText: "👍 1" }).waitFor();
    await onBob.locator('button.reaction:not(.mine)[data-emoji="👍"]', { hasText: "👍 1" }).click();
    await onAlice.locator('button.reaction.mine[data-emoji="👍"]', { hasText: "👍 2" }).waitFor();
    await onBob.locator('button.reaction.mine[data-emoji="👍"]', { hasText: "👍 2" }).click();
    await onAlice.locator('button.reaction.mine[data-emoji="👍"]', { hasText: "👍 1" }).waitFor();
    await onBob.locator('button.reaction:not(.mine)[data-emoji="👍"]', { hasText: "👍 1" }).waitFor();
  });

  await step("alice makes the direct conversation's messages disappear after a day: bob sees the setting", async () => {
    await conversationItem(alice, DM).click();
    await alice.page.selectOption("#retention", "86400");
    await conversationItem(bob, DM).click();
    await bob.page.locator("#messages li.notice", { hasText: "alice set messages to disappear after 1 day" }).waitFor();
    await bob.page.waitForFunction(() => document.querySelector("#retention").value === "86400");
    await expectMessages(bob, dmTexts);
  });

  await step("a search for a Chinese word finds the right message", async () => {
    await bob.page.fill("#search-input", "北京");
    await bob.page.press("#search-input", "Enter");
    const hit = bob.page.locator("#search-results li.hit");
    await hit.first().waitFor();
    const hits = await hit.evaluateAll((items) => items.map((item) => ({ conversation: item.dataset.conversation, seq: Number(item.dataset.seq), text: item.textContent })));
    if (hits.length !== 1 || hits[0].conversation !== DM || hits[0].seq !== 2 || !hits[0].text.includes("北京")) {
      throw new Error(`unexpected hits ${JSON.stringify(hits)}`);
    }
    await hit.first().click();
    await bob.page.locator('#messages li.message.highlight[data-seq="2"]', { hasText: "我们明天在北京开会" }).waitFor();
  });

  await step("alice makes bob an admin; bob renames the group and alice sees the new title", async () => {
    await conversationItem(alice, "g:team").click();
    await alice.page.click("#members-toggle");
    await alice.page.locator('#roster-list li[data-user="alice"][data-role="owner"]').waitFor();
    await alice.page.locator('#roster-list li[data-user="bob"] button.promote').click();
    await alice.page.locator('#roster-list li[data-user="bob"][data-role="admin"]').waitFor();
    await conversationItem(bob, "g:team").click();
    await bob.page.locator("#rename-group").click();
    await bob.page.fill("#rename-input", "dream team");
    await bob.page.click("#rename-form button[type=submit]");
    await alice.page.locator("#chat-title", { hasText: "dream team" }).waitFor();
    await conversationItem(alice, "g:team").locator("span", { hasText: "dream team" }).waitFor();
    await bob.page.locator("#messages li.notice", { hasText: "bob renamed the group to dream team" }).waitFor();
    if (await bob.page.locator("#disband-group").isVisible()) throw new Error("an admin is offered to disband");
  });

  await step("bob leaves the group: it is gone from his list; the owner cannot leave", async () => {
    await conversationItem(bob, "g:team").click();
    await bob.page.locator("#leave-group").click();
    await conversationItem(bob, "g:team").waitFor({ state: "detached" });
    await conversationItem(alice, "g:team").click();
    await alice.page.locator("#messages li.notice", { hasText: "bob left" }).waitFor();
    const refused = alice.page.waitForEvent("dialog");
    await alice.page.locator("#leave-group").click();
    const dialog = await refused;
    if (!dialog.message().includes("(forbidden)")) throw new Error(`unexpected: ${dialog.message()}`);
  });

  await step("alice sends bob an image and a text file: bob sees the image loaded from the download route and downloads the file; an HTML file is refused", async () => {
    await conversationItem(alice, DM).click();
    await conversationItem(bob, DM).click();
    const shownBefore = await bob.page.locator("#messages li.message").count();
    // the image alone (a message without text), chosen through the attach button
    const chooser = alice.page.waitForEvent("filechooser");
    await alice.page.click("#attach");
    await (await chooser).setFiles({ name: "dot.png", mimeType: "image/png", buffer: PNG });
    await alice.page.locator('#messages li.message.mine:not(.pending) .attachment img[alt="dot.png"]').waitFor({ state: "attached" });
    await expectImageLoaded(alice, "dot.png", "#messages li.message.mine:not(.pending)");
    await bob.page.locator('#messages li.message .attachment img[alt="dot.png"]').waitFor({ state: "attached" });
    await expectImageLoaded(bob, "dot.png");
    const imageMessage = bob.page.locator("#messages li.message", { has: bob.page.locator('img[alt="dot.png"]') });
    const [text, src] = await imageMessage.evaluate((item) => [item.querySelector(".text").textContent, item.querySelector("img").getAttribute("src")]);
    if (text !== "") throw new Error(`the image message has text ${JSON.stringify(text)}`);
    if (!/\/v1\/attachments\/[0-9a-f]{32}\?token=/.test(src)) throw new Error(`unexpected image source ${src}`);
    if ((await bob.page.locator("#messages li.message").count()) !== shownBefore + 1) throw new Error("the image should be one new message");

    // a text file with the text typed in the composer: a download link with its name and size
    const notes = "chorus notes: 北京\n";
    await alice.page.fill("#message-input", "the notes");
    await alice.page.setInputFiles("#attach-input", { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from(notes) });
    const fileMessage = bob.page.locator("#messages li.message", { hasText: "the notes" });
    const link = fileMessage.locator(".attachment-file a", { hasText: "notes.txt" });
    await link.waitFor();
    await fileMessage.locator(".attachment-file .size", { hasText: `${Buffer.byteLength(notes)} B` }).waitFor();
    if ((await fileMessage.locator("img").count()) !== 0) throw new Error("a text file is shown as an image");
    if ((await alice.page.inputValue("#message-input")) !== "") throw new Error("the composer keeps the text sent with the file");
    const downloading = bob.page.waitForEvent("download");
    await link.click();
    const download = await downloading;
    if (download.suggestedFilename() !== "notes.txt") throw new Error(`downloaded as ${download.suggestedFilename()}`);
    const chunks = [];
    for await (const chunk of await download.createReadStream()) chunks.push(chunk);
    if (Buffer.concat(chunks).toString() !== notes) throw new Error(`downloaded ${JSON.stringify(Buffer.concat(chunks).toString())}`);

    // a type the node does not take: refused before any byte is sent, the way refusals show
    const refused = alice.page.waitForEvent("dialog");
    await alice.page.fill("#message-input", "a page");
    await alice.page.setInputFiles("#attach-input", { name: "page.html", mimeType: "text/html", buffer: Buffer.from("<p>hi</p>") });
    const dialog = await refused;
    if (!dialog.message().includes("(unsupported_type)")) throw new Error(`unexpected refusal: ${dialog.message()}`);
    if ((await alice.page.inputValue("#message-input")) !== "a page") throw new Error("the text typed is lost after a refused file");
    await alice.page.fill("#message-input", "");
    if ((await alice.page.locator("#messages li.message.pending").count()) !== 0) throw new Error("a refused file left a pending message");
  });

  for (const who of [alice, bob]) {
    const path = join(artifacts, `web-client-${who.user}.png`);
    await who.page.screenshot({ path, fullPage: true });
    console.log(`screenshot: ${path}`);
  }
} catch {
  failed = true;
} finally {
  await browser.close();
}
if (failed) process.exit(1);
console.log("all browser steps passed");
