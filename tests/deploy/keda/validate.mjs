// Validates KEDA objects against the schemas of KEDA's API types, as compiled into
// @kubernetes-models/keda (package.json pins the version; docs/deploy.md names the KEDA release).
//
//   node validate.mjs NODE_MODULES_DIR < objects.json
//
// objects.json is a JSON array of objects (keda.sh/v1alpha1 ScaledJob, TriggerAuthentication).
// Prints one line per object, `valid KIND/NAME` or `invalid KIND/NAME: errors`, and exits 1
// when any object is invalid or of a kind it has no schema for.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const KINDS = ["ScaledJob", "ScaledObject", "TriggerAuthentication", "ClusterTriggerAuthentication"];

async function models(modulesDir) {
  const found = {};
  for (const kind of KINDS) {
    const file = join(modulesDir, "@kubernetes-models", "keda", "keda.sh", "v1alpha1", `${kind}.js`);
    found[`keda.sh/v1alpha1/${kind}`] = (await import(pathToFileURL(file).href))[kind];
  }
  return found;
}

async function main() {
  const modulesDir = process.argv[2];
  if (!modulesDir) {
    console.error("usage: node validate.mjs NODE_MODULES_DIR < objects.json");
    process.exit(2);
  }
  const classes = await models(modulesDir);
  const objects = JSON.parse(readFileSync(0, "utf8"));
  let failed = 0;
  for (const object of objects) {
    const name = `${object.kind}/${object.metadata?.name}`;
    const Model = classes[`${object.apiVersion}/${object.kind}`];
    if (!Model) {
      console.log(`invalid ${name}: no KEDA schema for ${object.apiVersion} ${object.kind}`);
      failed += 1;
      continue;
    }
    try {
      new Model(object).validate();
      console.log(`valid ${name}`);
    } catch (error) {
      console.log(`invalid ${name}: ${error.message}`);
      failed += 1;
    }
  }
  process.exit(failed ? 1 : 0);
}

await main();
