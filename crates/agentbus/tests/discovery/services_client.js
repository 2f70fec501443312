// Reads a service's discovery answers with nats.js's own services client
// (@nats-io/services), as a JavaScript tool would, and prints what it read
// as one JSON object: {"ping": [...], "info": [...], "stats": [...]}.
//
// Usage: NATS_URL=<the server's URL, with its credentials> node services_client.js <service>
// The packages come from NODE_PATH (the test installs them with npm).

const { connect } = require("@nats-io/transport-node");
const { Svcm } = require("@nats-io/services");

async function main() {
  const service = process.argv[2];
  const url = new URL(process.env.NATS_URL);
  const nc = await connect({
    servers: `${url.hostname}:${url.port}`,
    user: decodeURIComponent(url.username),
    pass: decodeURIComponent(url.password),
  });
  // Every instance on one loopback server answers well within this.
  const client = new Svcm(nc).client({ maxWait: 750 });
  const all = async (answers) => {
    const read = [];
    for await (const answer of await answers) {
      read.push(answer);
    }
    return read;
  };
  const read = {
    ping: await all(client.ping(service)),
    info: await all(client.info(service)),
    stats: await all(client.stats(service)),
  };
  process.stdout.write(JSON.stringify(read));
  await nc.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
