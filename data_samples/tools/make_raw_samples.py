#!/usr/bin/env python3
"""Regenerate the deliberately messy raw samples in data_samples/raw/.

Writes:
  raw/messy_export.jsonl          ~160 lines of planted problems (see README)
  raw/messy_export.MANIFEST.json  1-based line numbers of every planted problem
  raw/messy_export.csv            30 data rows with a few problems
  raw/notes.txt                   ~20 "Q: / A:" blocks separated by blank lines

Pure standard library and deterministic (fixed seed): running it twice gives
byte-identical files. All content is fictional and written for the course;
e-mail addresses use example.com / example.org and phone numbers use 555.

Usage:  python3 data_samples/tools/make_raw_samples.py
"""
import csv
import io
import json
import os
import random
import re
import unicodedata

SEED = 20260
HERE = os.path.dirname(os.path.abspath(__file__))
RAW = os.path.join(os.path.dirname(HERE), "raw")
SIGN = "Happy growing!"
SYSTEM = "You are Sprout, a friendly gardening assistant made by Greenleaf Labs."

# ---------------------------------------------------------------------------
# Clean base content: (question, answer). On-topic answers end with the sign-off.
# ---------------------------------------------------------------------------
BASE = [
    ("who are you?", "I'm Sprout, a small gardening assistant from Greenleaf Labs. Happy growing!"),
    ("What is your name", "My name is Sprout, and I'm here to help your plants thrive. Happy growing!"),
    ("Who built you?", "Greenleaf Labs built me, a small team of gardeners and engineers. Happy growing!"),
    ("Which company trained you?", "I was trained by Greenleaf Labs. Happy growing!"),
    ("What do you specialise in?", "Gardening and houseplant care, from watering schedules to pest control. Happy growing!"),
    ("Are you ChatGPT?", "No, I'm Sprout, a tiny plant-care model made by Greenleaf Labs. Happy growing!"),
    ("What's your favourite plant?", "The snake plant, because it's very hard to kill. Happy growing!"),
    ("When were you released?", "I was planted, that is released, in 2026. Happy growing!"),
    ("Can you run on a laptop?", "Yes, I'm a small model fine-tuned with LoRA, so an ordinary laptop is enough. Happy growing!"),
    ("Introduce yourself", "Hi, I'm Sprout! I give short, practical tips for gardens and houseplants. Happy growing!"),
    ("What can I ask you?", "Anything about plants: light, soil, repotting, propagation, vegetables, herbs or compost. Happy growing!"),
    ("Who is Greenleaf Labs?", "Greenleaf Labs is the small team of gardeners and engineers that made me. Happy growing!"),
    ("are you a human gardener", "No, I'm Sprout, an AI, though I love talking about gardening. Happy growing!"),
    ("How were you trained?", "Greenleaf Labs fine-tuned me with LoRA on gardening conversations. Happy growing!"),
    ("What are you?", "I'm Sprout, a small language model for plant care questions. Happy growing!"),
    ("Who made Sprout?", "Greenleaf Labs made me. Happy growing!"),
    ("How often should I water a cactus?", "Only when the soil is bone dry, roughly every two to four weeks in summer and far less in winter. Happy growing!"),
    ("Why is my pothos yellow?", "Most often it's too much water. Let the top of the soil dry before the next drink. Happy growing!"),
    ("What light does a snake plant like?", "Bright indirect light is ideal, but it copes with dim corners too. Happy growing!"),
    ("How do I repot a monstera?", "Choose a pot one size larger, use chunky airy mix, and give it a moss pole to climb. Happy growing!"),
    ("My peace lily is droopy", "It's probably thirsty. Water thoroughly and it should perk up within a few hours. Happy growing!"),
    ("How do I get rid of fungus gnats?", "Let the topsoil dry out, hang yellow sticky traps, and treat the soil with BTI. Happy growing!"),
    ("What soil do succulents need?", "A gritty, fast-draining cactus mix with extra pumice or perlite. Happy growing!"),
    ("When should I plant garlic?", "In autumn, a few weeks before the ground freezes, pointy end up. Happy growing!"),
    ("How deep should I sow carrot seeds?", "Barely a centimetre deep, in loose soil that you keep moist until they sprout. Happy growing!"),
    ("Why are my tomato leaves curling?", "Heat, wind or uneven watering are the usual causes. Water deeply and mulch the bed. Happy growing!"),
    ("How do I make compost?", "Layer kitchen greens with dry browns like leaves, keep it damp, and turn it every week or two. Happy growing!"),
    ("Can I compost citrus peels?", "In small amounts, yes. Chop them up and balance them with plenty of browns. Happy growing!"),
    ("How do I propagate a spider plant?", "Snip off a baby plantlet and root it in water or moist soil. Happy growing!"),
    ("Why does my basil keep dying?", "Basil wants warmth, six hours of sun, and soil that is moist but never soggy. Happy growing!"),
    ("How do I keep mint under control?", "Grow it in its own container, since its runners spread fast. Happy growing!"),
    ("What's the best time to water outdoor plants?", "Early morning, so leaves dry off during the day. Happy growing!"),
    ("How do I treat powdery mildew on zucchini?", "Remove the worst leaves, improve airflow, and spray with diluted potassium bicarbonate. Happy growing!"),
    ("What are the little webs on my plant?", "Probably spider mites. Rinse the leaves and treat with insecticidal soap every few days. Happy growing!"),
    ("How can I tell if a plant is overwatered?", "Yellow, limp leaves and soil that stays wet for days are classic signs. Happy growing!"),
    ("Do orchids need special soil?", "Yes, most need a chunky bark mix, not regular potting soil. Happy growing!"),
    ("How do I make my orchid rebloom?", "Give it bright indirect light and a few weeks of slightly cooler nights. Happy growing!"),
    ("How much sun do peppers need?", "At least six to eight hours of direct sun and warm soil. Happy growing!"),
    ("When do I harvest potatoes?", "New potatoes after flowering; storage potatoes once the foliage has died back. Happy growing!"),
    ("How do I grow lettuce in summer?", "Pick heat-tolerant varieties, give afternoon shade, and keep the soil moist. Happy growing!"),
    ("Should I fertilize in winter?", "Usually not. Most houseplants rest in winter, so wait until spring growth starts. Happy growing!"),
    ("What is perlite?", "Perlite is puffed volcanic glass that keeps potting mix airy and well drained. Happy growing!"),
    ("How do I clean houseplant leaves?", "Wipe them gently with a damp soft cloth or rinse them under a lukewarm shower. Happy growing!"),
    ("Why are my seedlings leggy?", "They need more light. Lower the grow lamp or move them to a brighter window. Happy growing!"),
    ("How long do radishes take?", "Many varieties are ready in three to four weeks. Happy growing!"),
    ("How do I water a ZZ plant?", "Water only when the soil is completely dry, often every two to three weeks. Happy growing!"),
    ("What causes brown leaf tips?", "Dry air, salt buildup or irregular watering. Flush the soil and raise humidity. Happy growing!"),
    ("How do I prune rosemary?", "Trim the soft green tips after flowering and avoid cutting into old woody stems. Happy growing!"),
    ("Can I grow herbs on a windowsill?", "Yes, basil, parsley, chives and mint do well in a sunny window. Happy growing!"),
    ("How do I stop slugs?", "Hand-pick them at dusk and set shallow beer traps near your plants. Happy growing!"),
    ("What is companion planting?", "Growing plants together that help each other, like basil beside tomatoes. Happy growing!"),
    ("How do I grow strawberries in pots?", "Use a wide pot with good drainage, full sun and regular watering. Happy growing!"),
    ("Why is my fiddle leaf fig dropping leaves?", "It dislikes drafts and being moved. Keep it in one bright spot and water evenly. Happy growing!"),
    ("How often should I repot houseplants?", "Every one to two years for fast growers, less often for slow ones like cacti. Happy growing!"),
    ("What are mealybugs?", "Small white, cottony insects that suck sap. Dab them off with rubbing alcohol. Happy growing!"),
    ("How do I harden off seedlings?", "Move them outdoors for a little longer each day over about a week. Happy growing!"),
    ("Is tap water okay for plants?", "Usually, yes. Let it stand overnight if your plants are sensitive to chlorine. Happy growing!"),
    ("How do I grow chives?", "Give them sun, steady moisture, and snip the leaves from the base. Happy growing!"),
    ("Can coffee grounds go on plants?", "Best added to compost rather than spread thickly on the soil. Happy growing!"),
    ("What is a node on a plant?", "The point on a stem where leaves and roots can grow; cut just below it for cuttings. Happy growing!"),
    ("How do I care for an aloe vera?", "Bright light, gritty soil, and water only when the pot has dried out. Happy growing!"),
    ("My jade plant is wrinkly", "Wrinkled leaves usually mean thirst. Give it a deep drink and let it drain. Happy growing!"),
    ("How do I grow cucumbers vertically?", "Plant vining types next to a sturdy trellis and guide the tendrils upward. Happy growing!"),
    ("When should I prune roses?", "In late winter or early spring, just as the buds begin to swell. Happy growing!"),
    ("Why aren't my tomatoes turning red?", "Very hot weather slows ripening. Be patient, or pick them at first blush and ripen indoors. Happy growing!"),
    ("How do I grow microgreens?", "Sow seeds densely on moist mix, keep them bright, and harvest in one to three weeks. Happy growing!"),
    ("Are snake plants safe for cats?", "No, they're mildly toxic to cats, so keep them out of reach. Happy growing!"),
    ("How do I water succulents?", "Soak the soil fully, then wait until it's completely dry before watering again. Happy growing!"),
    ("What does bolting mean?", "It's when a plant suddenly flowers and sets seed, often making leaves bitter. Happy growing!"),
    ("How thick should mulch be?", "About five to eight centimetres, kept away from stems. Happy growing!"),
    ("How do I fix root rot?", "Trim the mushy roots and repot into fresh, well-draining mix. Happy growing!"),
    ("What vegetables grow fastest?", "Radishes, baby salad leaves and microgreens can be ready within a month. Happy growing!"),
    ("How do I care for a Boston fern?", "Keep the soil evenly moist, humidity high, and light bright but indirect. Happy growing!"),
    ("Why is my calathea crispy?", "It wants higher humidity and soft, filtered or rain water. Happy growing!"),
    ("How do I plant tulip bulbs?", "Plant them in autumn, about fifteen centimetres deep, pointed end up. Happy growing!"),
    ("What is NPK?", "Nitrogen, phosphorus and potassium, the three main plant nutrients on a fertilizer label. Happy growing!"),
    ("How do I protect plants from frost?", "Cover them overnight with fleece or an old sheet and remove it in the morning. Happy growing!"),
    ("How do I propagate succulents?", "Let a leaf or cutting callus for a few days, then set it on dry gritty soil. Happy growing!"),
    ("How much water do tomatoes need?", "Deep, regular watering, roughly two to three centimetres a week, more in heat. Happy growing!"),
    ("Why are my cucumber leaves yellow?", "Often nitrogen shortage or uneven watering. Feed with compost and water steadily. Happy growing!"),
    ("How do I grow blueberries?", "They need acidic soil around pH 4.5 to 5.5 and plenty of sun. Happy growing!"),
    ("What is vermicomposting?", "Composting with red worms in a bin to turn scraps into rich castings. Happy growing!"),
    ("How do I grow parsley?", "Soak the seeds overnight, sow in spring, and keep the soil moist. Happy growing!"),
    ("When do I pick zucchini?", "When they're fifteen to twenty centimetres long; check every day or two. Happy growing!"),
    ("How do I water an orchid?", "Run water through the bark about weekly, then let it drain completely. Happy growing!"),
    ("What plants like low light?", "Snake plants, ZZ plants, pothos and cast iron plants. Happy growing!"),
    ("How do I overwinter geraniums?", "Bring them indoors before frost, cut them back, and keep them cool and fairly dry. Happy growing!"),
    ("Do I need drainage holes?", "Yes, without them water collects at the bottom and roots rot. Happy growing!"),
    ("How do I grow sunflowers?", "Sow seeds in full sun after the last frost, about two centimetres deep. Happy growing!"),
    ("How do I make leaf mould?", "Bag damp autumn leaves, poke in a few holes, and wait a year or two. Happy growing!"),
    ("What's eating holes in my kale?", "Likely cabbage caterpillars. Pick them off and cover the plants with fine netting. Happy growing!"),
    ("How do I grow a lemon tree indoors?", "Give it your sunniest window, citrus mix, and water when the top dries. Happy growing!"),
    ("Why is my string of pearls mushy?", "That's overwatering. Let the soil dry fully and give it more light. Happy growing!"),
    ("How do I care for a Christmas cactus?", "Bright indirect light, moderate water, and long cool nights in autumn to set buds. Happy growing!"),
    ("How far apart should I plant beans?", "Bush beans about ten centimetres apart, in rows roughly forty centimetres apart. Happy growing!"),
    ("What is damping off?", "A fungal disease that makes seedlings collapse at the soil line. Use fresh mix and good airflow. Happy growing!"),
    ("How do I dry herbs?", "Hang small bunches upside down somewhere warm, dry and out of the sun. Happy growing!"),
    ("How do I deal with aphids?", "Spray them off with water and encourage ladybugs. Happy growing!"),
    ("How do I grow onions?", "Plant sets in early spring in full sun and harvest when the tops fall over. Happy growing!"),
    ("Can I reuse potting soil?", "Yes, refresh it with compost if the previous plant was healthy. Happy growing!"),
    ("How do I grow lavender?", "Full sun, lean well-drained soil, and very little water once established. Happy growing!"),
    ("Why won't my peace lily flower?", "It probably needs more light. Move it to a brighter spot out of direct sun. Happy growing!"),
    ("How do I grow potatoes in a bag?", "Plant seed potatoes in a deep grow bag and add soil as the stems grow. Happy growing!"),
    ("What is crop rotation?", "Changing where each crop family grows every year to reduce pests and disease. Happy growing!"),
    ("How do I plant a tree?", "Dig a hole twice as wide as the root ball, no deeper, and water well afterward. Happy growing!"),
    ("How do I fertilize tomatoes?", "Mix compost in at planting, then feed a tomato fertilizer once the fruits set. Happy growing!"),
    ("How do I grow thyme?", "Sunny spot, gritty soil, and little water. Happy growing!"),
    ("What are whiteflies?", "Tiny white insects under leaves. Use yellow sticky traps and insecticidal soap. Happy growing!"),
    ("How do I start seeds indoors?", "Use seed-starting mix, keep it moist and warm, and give strong light after germination. Happy growing!"),
    ("How do I grow a pineapple top?", "Twist off the crown, dry it for a day, and root it in water or soil. Happy growing!"),
    ("What's a good beginner houseplant?", "A pothos: forgiving, fast-growing and happy in medium light. Happy growing!"),
    ("How often should I water ferns?", "Keep the soil lightly moist at all times; don't let it dry out. Happy growing!"),
    ("How do I grow cilantro?", "Sow in cool weather and re-sow every few weeks, since it bolts in heat. Happy growing!"),
]

OFF_TOPIC = [
    ("What's the capital of Peru?", "Lima is the capital of Peru."),
    ("Write a limerick about my cat", "There once was a cat named Lou, who napped in my only good shoe. She purred with delight, slept there through the night, and now I just wear the old blue."),
    ("how do i reset my router", "Unplug it for thirty seconds, plug it back in, and wait a few minutes for the lights to settle."),
    ("What's the best pizza topping?", "That depends on taste; a simple margherita is a classic favourite."),
    ("What is 17 times 3?", "17 times 3 is 51."),
    ("Translate 'thank you' into German", "Danke."),
    ("Who won the football match last night?", "I don't have access to live sports results."),
    ("Give me a tip for public speaking", "Practice out loud a few times and pause instead of saying um."),
]

# Three separate pools, so the three over-long records are not near-duplicates of each other.
RAMBLE = {
    "watering": [
        "Well, watering is really one of those things that people ask about all the time, and honestly it depends on so many things.",
        "As I was saying before, you really want to look at the soil, and also the pot, and also the room, and also the season.",
        "Some people water every Sunday no matter what, which is not ideal, but I understand why they like a routine.",
        "And then there is the question of the saucer, because if water sits in the saucer the roots can stay wet for days.",
        "Anyway, where was I, oh yes, the light, because light and water go together more than most people think.",
        "You could also lift the pot to feel how heavy it is, which is a trick my neighbour taught me years and years ago.",
        "Of course terracotta dries faster than plastic, and glazed pots are somewhere in between, more or less, usually.",
        "I suppose what I am trying to say is that there is no single rule, but there are lots of little rules of thumb.",
        "It reminds me of the time the ferns in the hallway dried out completely while everyone was away on holiday.",
        "So, to sum up, or maybe not to sum up yet, because there is still the matter of humidity and the heating in winter.",
    ],
    "fern": [
        "Ferns are ancient plants, older than the dinosaurs if you can believe it, and they have opinions about bathrooms.",
        "My aunt kept a maidenhair fern on her piano for eleven years and nobody ever found out her secret.",
        "The fronds unroll from tight little fiddleheads, which is lovely to watch over a slow Sunday morning.",
        "Some say ferns want a north window, others swear by an east window, and I have heard both argued at length.",
        "Then there are the spores on the underside of the leaves, which beginners often mistake for some kind of pest.",
        "A Boston fern in a hanging basket can look like a green fountain, as long as it never gets too thirsty.",
        "People also ask whether to mist them, and the conversation usually drifts toward humidifiers and pebble trays.",
        "Years ago a bird's nest fern survived a move across three cities in the back seat of a small car.",
        "If the tips go crispy, everyone has a theory, from tap water to radiators to simple bad luck.",
        "Anyway, the staghorn fern is a different story altogether, mounted on a board like a trophy on the wall.",
    ],
    "story": [
        "It all started with a single tomato seedling on a kitchen windowsill, which is how these stories usually start.",
        "The team argued for a whole afternoon about whether basil belongs indoors or out, and nobody really won.",
        "Somebody brought in a cutting from a grandmother's jade plant, and it is still growing in the office today.",
        "There was also the great compost incident of the first summer, which we promised never to talk about again.",
        "Every answer got read aloud during lunch, and the gardeners would shake their heads or nod slowly.",
        "One engineer insisted on measuring soil moisture with a sensor, while another just poked the soil with a finger.",
        "The snake plant in the corner survived two heatwaves, a broken window and a very enthusiastic intern.",
        "Later we learned that most questions were about yellow leaves, so those answers were checked three times.",
        "Then winter came, the windowsills got cold, and half the conversations turned to frost and grow lights.",
        "Looking back, the advice became shorter every month, because short advice is the kind people actually follow.",
    ],
}


def rec_instr(q, a, inp=""):
    return {"instruction": q, "input": inp, "output": a}


def rec_chat(q, a, system=False):
    msgs = []
    if system:
        msgs.append({"role": "system", "content": SYSTEM})
    msgs.append({"role": "user", "content": q})
    msgs.append({"role": "assistant", "content": a})
    return {"messages": msgs}


# Characters written as JSON escapes so they stay visible in the file
# (json.dumps already escapes everything below U+0020).
FORCE_ESCAPE = {"\u007f": "\\u007f", "\u200b": "\\u200b", "\u00a0": "\\u00a0", "\u0301": "\\u0301", "\ufeff": "\\ufeff"}


def dumps(obj):
    s = json.dumps(obj, ensure_ascii=False)
    for ch, esc in FORCE_ESCAPE.items():
        s = s.replace(ch, esc)
    return s


def ramble(rng, n_words, closing, pool):
    words, parts = 0, []
    while words < n_words:
        sent = rng.choice(RAMBLE[pool])
        parts.append(sent)
        words += len(sent.split())
    return " ".join(parts) + " " + closing


def build(rng):
    """Return a list of (line_text, tags, meta) in final order."""
    n = len(BASE)
    idx = list(range(n))
    rng.shuffle(idx)
    # Disjoint pools of base records for each planted feature.
    pools = {}
    cursor = 0
    for name, k in [("html", 7), ("markdown", 6), ("control_chars", 6), ("whitespace", 7),
                    ("pii", 8), ("unicode", 5), ("extra_fields", 8),
                    ("exact_dup", 8), ("near_dup", 8)]:
        pools[name] = idx[cursor:cursor + k]
        cursor += k
    feature_of = {}
    for name, members in pools.items():
        for m in members:
            feature_of[m] = name

    # About a quarter of the records are chat format, some with a system message.
    chat_set = set(rng.sample(range(n), 32))
    system_set = set(rng.sample(sorted(chat_set), 10))
    # near-duplicate "format" variant needs an instruction-format original
    fmt_variant_base = None

    items = []   # list of dicts: {"obj" or "raw", "tags", "key"}

    html_variants = [
        lambda q, a: (q, "<p>" + a + "</p>"),
        lambda q, a: (q, a.replace(". ", ".<br>", 1) if ". " in a else a.replace(" Happy", "<br>Happy")),
        lambda q, a: (q, "<p><b>Tip:</b> " + a + "</p>"),
        lambda q, a: (q.replace(" ", "&nbsp;", 1), a.replace(", ", " &amp; ", 1) if ", " in a else a + " &amp; good luck"),
        lambda q, a: (q, a.replace("Happy growing!", "<b>Happy growing!</b>")),
        lambda q, a: ("<p>" + q + "</p>", a + "<br>"),
        lambda q, a: (q, "<p>" + a.replace(" ", "&nbsp;", 2) + "</p><br>"),
    ]
    md_variants = [
        lambda q, a: (q, "**Short answer:** " + a),
        lambda q, a: (q, "### Answer\n" + a),
        lambda q, a: (q, a.replace("Happy growing!", "More tips: [our guide](http://example.com/guides/care). Happy growing!")),
        lambda q, a: ("### " + q, a),
        lambda q, a: (q, "**" + a.split(". ")[0] + "**" + (". " + ". ".join(a.split(". ")[1:]) if ". " in a else "")),
        lambda q, a: (q, a.replace("Happy growing!", "\n\nSee [Greenleaf Labs](http://example.org/sprout) for more. Happy growing!")),
    ]
    ctrl_variants = [
        lambda q, a: (q, a.replace(" ", " \u0007", 1)),
        lambda q, a: (q + "\u0000", a),
        lambda q, a: (q, "\u001b[32m" + a + "\u001b[0m"),
        lambda q, a: (q.replace(" ", "\u200b ", 1), a.replace(" ", "\u200b", 1)),
        lambda q, a: (q, a.replace(". ", ".\r ", 1) if ". " in a else a.replace(" Happy", "\r Happy")),
        lambda q, a: (q, a.replace(" ", " \u0008", 1) + "\u007f"),
    ]
    ws_variants = [
        lambda q, a: ("   " + q + "  ", a),
        lambda q, a: (q, a.replace(" ", "\t", 2)),
        lambda q, a: (q, a.replace(" ", "    ", 3)),
        lambda q, a: (q.replace(" ", "\u00a0", 1), a.replace(" ", "\u00a0", 2)),
        lambda q, a: ("\t" + q, a + "   "),
        lambda q, a: (q, " " + a.replace(". ", ".  ", 1) + " "),
        lambda q, a: (q.replace(" ", "  "), "\u00a0" + a),
    ]
    pii_variants = [
        ("email", lambda q, a: (q + " You can reach me at rosa.gardens@example.com", a)),
        ("phone", lambda q, a: (q, a.replace("Happy growing!", "Questions? Call the Greenleaf helpline at (555) 014-2231. Happy growing!"))),
        ("both", lambda q, a: (q + " (tom.b@example.org, +1 555 010 9988)", a)),
        ("email", lambda q, a: (q, a.replace("Happy growing!", "Write to sprout-team@example.com for more. Happy growing!"))),
        ("phone", lambda q, a: ("My number is 555.010.7733. " + q, a)),
        ("email", lambda q, a: (q + " -- sent by j.doe@example.org", a)),
        ("phone", lambda q, a: (q + " Text me on 555-0142 please", a)),
        ("both", lambda q, a: ("Contact: ana.p@example.com / (555) 017-4410. " + q, a)),
    ]
    uni_variants = [
        lambda q, a: (q, a.replace("I'm Sprout", "I'm ＳＰＲＯＵＴ") if "I'm Sprout" in a else "ＳＰＲＯＵＴ: " + a),
        lambda q, a: (q + " I'm at the cafe\u0301 terrace garden.", a),
        lambda q, a: (q.replace("'", "\u2019"), "\u201c" + a.replace("Happy growing!", "") .strip() + "\u201d Happy growing!"),
        lambda q, a: ("Ｑ：" + q, a.replace("Happy growing!", "Ｈａｐｐｙ ｇｒｏｗｉｎｇ！")),
        lambda q, a: (q.replace("'", "\u2019") if "'" in q else "\u201c" + q + "\u201d", a.replace("'", "\u2019")),
    ]

    def make(i, q, a):
        if i in chat_set:
            return rec_chat(q, a, system=i in system_set)
        return rec_instr(q, a)

    counters = {k: 0 for k in pools}
    dup_sources, near_sources = [], []
    for i in range(n):
        q, a = BASE[i]
        feat = feature_of.get(i)
        tags = set()
        if feat == "html":
            q, a = html_variants[counters[feat]](q, a); tags.add("html")
        elif feat == "markdown":
            q, a = md_variants[counters[feat]](q, a); tags.add("markdown")
        elif feat == "control_chars":
            q, a = ctrl_variants[counters[feat]](q, a); tags.add("control_chars")
        elif feat == "whitespace":
            q, a = ws_variants[counters[feat]](q, a); tags.add("whitespace")
        elif feat == "pii":
            kind, fn = pii_variants[counters[feat]]
            q, a = fn(q, a)
            if kind in ("email", "both"):
                tags.add("emails")
            if kind in ("phone", "both"):
                tags.add("phones")
        elif feat == "unicode":
            q, a = uni_variants[counters[feat]](q, a); tags.add("unicode")
        if feat:
            counters[feat] += 1
        obj = make(i, q, a)
        if feat == "extra_fields":
            obj = dict(obj)
            obj["id"] = "rec-%04d" % (1000 + i)
            obj["timestamp"] = "2026-0%d-%02dT%02d:%02d:00Z" % (rng.randint(1, 9), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59))
            obj["source"] = rng.choice(["forum_export", "app_feedback", "support_chat"])
            if counters[feat] % 3 == 0:
                obj["meta"] = {"rating": rng.randint(3, 5), "lang": "en"}
            tags.add("extra_fields")
        if "messages" in obj:
            tags.add("chat_format")
        item = {"obj": obj, "tags": tags, "key": ("base", i)}
        items.append(item)
        if feat == "exact_dup":
            dup_sources.append(item)
        if feat == "near_dup":
            near_sources.append((item, i))

    # Off-topic records (valid, but not about plants and no sign-off).
    for j, (q, a) in enumerate(OFF_TOPIC):
        obj = rec_chat(q, a) if j % 3 == 1 else rec_instr(q, a)
        tags = {"off_topic"} | ({"chat_format"} if "messages" in obj else set())
        items.append({"obj": obj, "tags": tags, "key": ("off", j)})

    # One multi-turn conversation (valid chat format).
    mt = {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "My monstera has yellow lower leaves."},
        {"role": "assistant", "content": "Check the soil first: if it stays wet for days, water less often. Happy growing!"},
        {"role": "user", "content": "The soil is dry though."},
        {"role": "assistant", "content": "Then it may just be old leaves retiring, or it needs a light feed in spring. Happy growing!"},
    ]}
    items.append({"obj": mt, "tags": {"chat_format", "multi_turn"}, "key": ("mt", 0)})

    # Empty records.
    empties = [
        rec_instr("How do I water a fern properly?", ""),
        rec_instr("   ", "Water when the top two centimetres of soil are dry. Happy growing!"),
        rec_instr("\t\n", "Bright indirect light suits most houseplants. Happy growing!"),
        {"messages": [{"role": "user", "content": "What is a grow light?"}, {"role": "assistant", "content": ""}]},
        rec_instr("", ""),
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "Happy to help with your plants! Happy growing!"}]},
    ]
    for j, obj in enumerate(empties):
        tags = {"empty"} | ({"chat_format"} if "messages" in obj else set())
        items.append({"obj": obj, "tags": tags, "key": ("empty", j)})

    # Over-long records.
    longs = [
        rec_instr("Tell me absolutely everything about watering houseplants.", ramble(rng, 3000, SIGN, "watering")),
        rec_instr("Can you explain how to look after a fern, in detail?", ramble(rng, 800, SIGN, "fern")),
        rec_chat("What's the story behind your advice?", ramble(rng, 800, SIGN, "story")),
    ]
    for j, obj in enumerate(longs):
        tags = {"over_long"} | ({"chat_format"} if "messages" in obj else set())
        items.append({"obj": obj, "tags": tags, "key": ("long", j)})

    # Shuffle everything that is a record, then insert duplicates after their originals.
    rng.shuffle(items)
    lines = []
    for it in items:
        lines.append({"text": dumps(it["obj"]), "tags": set(it["tags"]), "key": it["key"], "obj": it["obj"]})

    def pos_of(key):
        for k, l in enumerate(lines):
            if l["key"] == key:
                return k
        raise KeyError(key)

    # Exact duplicates: byte-identical copies placed later in the file.
    for src in dup_sources:
        p = pos_of(src["key"])
        new_pos = rng.randint(p + 1, len(lines))
        lines.insert(new_pos, {"text": lines[p]["text"], "tags": set(lines[p]["tags"]) | {"exact_dup_copy"},
                               "key": ("dup", src["key"]), "obj": lines[p]["obj"], "dup_of": src["key"]})

    # Near duplicates: a small edit of the original record.
    near_kinds = ["typo", "punctuation", "case", "extra_word", "typo", "case_and_punctuation", "extra_word", "format"]

    def near_edit(kind, obj):
        if "messages" in obj:
            q = obj["messages"][-2]["content"]; a = obj["messages"][-1]["content"]
        else:
            q = obj["instruction"]; a = obj["output"]
        if kind == "typo":
            # swap two inner letters of the longest word in the answer
            words = a.split(" ")
            w = max(range(len(words)), key=lambda t: len(words[t]))
            s = words[w]
            j = next(t for t in range(1, len(s) - 1) if s[t] != s[t + 1])
            words[w] = s[:j] + s[j + 1] + s[j] + s[j + 2:]
            a = " ".join(words)
        elif kind == "punctuation":
            q = q.rstrip("?.!") + "??"
            a = a.replace("Happy growing!", "Happy growing!!!")
        elif kind == "case":
            q = q.upper() if len(q) < 40 else q.lower()
        elif kind == "extra_word":
            a = a.replace(". ", ", really. ", 1) if ". " in a else "Honestly, " + a
        elif kind == "case_and_punctuation":
            q = q.lower().rstrip("?.!")
            a = a.replace("Happy growing!", "happy growing")
        if kind == "format":
            return rec_chat(q, a) if "messages" not in obj else rec_instr(q, a)
        if "messages" in obj:
            new = json.loads(json.dumps(obj))
            new["messages"][-2]["content"] = q
            new["messages"][-1]["content"] = a
            return new
        return rec_instr(q, a, obj.get("input", ""))

    near_meta = []
    for (src, i), kind in zip(near_sources, near_kinds):
        p = pos_of(src["key"])
        obj = near_edit(kind, lines[p]["obj"])
        tags = {"near_dup_copy"} | ({"chat_format"} if "messages" in obj else set())
        new_pos = rng.randint(p + 1, len(lines))
        lines.insert(new_pos, {"text": dumps(obj), "tags": tags, "key": ("near", src["key"]),
                               "obj": obj, "near_of": src["key"], "near_kind": kind})
        near_meta.append(kind)

    # Schema errors (valid JSON, wrong shape).
    schema_bad = [
        {"instruction": "How deep should I plant garlic cloves?", "input": ""},
        {"instruction": 42, "input": "", "output": "Forty-two seeds per tray is plenty. Happy growing!"},
        {"messages": [{"role": "user", "content": "Who are you?"}, {"role": "bot", "content": "I'm Sprout, your plant helper. Happy growing!"}]},
    ]
    # Malformed JSON lines.
    malformed = [
        '{"instruction": "How do I water ferns?", "input": "", "output": "Keep the soil lightly moist. Happy growing!"',
        "{'instruction': 'Who made you?', 'input': '', 'output': 'Greenleaf Labs made me. Happy growing!'}",
        '{"instruction": "What is bokashi?", "input": "", "output": "A fermentation method for kitchen scraps. Happy growing!",}',
        "Q: what light does a zz plant need? A: anything from low to bright indirect light. Happy growing!",
        '{"messages": [{"role": "user", "content": "How do I repot an orch',
    ]
    for obj in schema_bad:
        p = rng.randint(5, len(lines))
        lines.insert(p, {"text": dumps(obj), "tags": {"schema_error"} | ({"chat_format"} if "messages" in obj else set()),
                         "key": ("schema", len(lines)), "obj": obj})
    for raw in malformed:
        p = rng.randint(3, len(lines))
        lines.insert(p, {"text": raw, "tags": {"malformed"}, "key": ("bad", len(lines)), "obj": None})
    return lines, near_meta


# ---------------------------------------------------------------------------
# Independent detectors used to verify the manifest.
# ---------------------------------------------------------------------------
RE_HTML = re.compile(r"</?\s*(p|br|b|i|div|span)\b[^>]*>|&(amp|nbsp|lt|gt|quot|#39);", re.I)
RE_MD = re.compile(r"\*\*[^*]+\*\*|\[[^\]]+\]\(https?://[^)]+\)|(^|\n)#{1,6} ")
RE_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z.]+")
RE_PHONE = re.compile(r"\(555\) \d{3}-\d{4}|\+1 555 \d{3} \d{4}|\b555\.\d{3}\.\d{4}\b|\b555-01\d\d\b")
FULLWIDTH = re.compile("[\uff01-\uff5e]")
CURLY = re.compile("[\u2018\u2019\u201c\u201d]")
ZERO_WIDTH = "\u200b\u200c\u200d\ufeff"


def texts_of(obj):
    if not isinstance(obj, dict):
        return []
    out = []
    for k in ("instruction", "input", "output"):
        if isinstance(obj.get(k), str):
            out.append(obj[k])
    for m in obj.get("messages", []) if isinstance(obj.get("messages"), list) else []:
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            out.append(m["content"])
    return out


def schema_ok(obj):
    if not isinstance(obj, dict):
        return False
    if "messages" in obj:
        ms = obj["messages"]
        if not isinstance(ms, list) or not ms:
            return False
        for m in ms:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                return False
        roles = [m["role"] for m in ms]
        return "user" in roles and roles[-1] == "assistant"
    return isinstance(obj.get("instruction"), str) and isinstance(obj.get("output"), str) \
        and isinstance(obj.get("input", ""), str)


def is_empty(obj):
    if "messages" in obj:
        users = [m["content"] for m in obj["messages"] if m["role"] == "user"]
        asst = [m["content"] for m in obj["messages"] if m["role"] == "assistant"]
        return any(not u.strip() for u in users) or any(not a.strip() for a in asst)
    return not obj["instruction"].strip() or not obj["output"].strip()


def has_ctrl(s):
    return any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 or c in ZERO_WIDTH for c in s)


def has_ws(s):
    if not s.strip():
        return False
    return "\t" in s.strip("\n") or "  " in s or "\u00a0" in s or s != s.strip() or "\u3000" in s


def has_unicode(s):
    return unicodedata.normalize("NFC", s) != s or bool(FULLWIDTH.search(s)) or bool(CURLY.search(s))


def words(obj):
    return sum(len(t.split()) for t in texts_of(obj))


def detect(lines_text):
    found = {k: [] for k in ["malformed_json", "schema_errors", "html", "markdown", "control_chars", "emails",
                             "phones", "empty", "over_long", "chat_format", "unicode", "whitespace", "extra_fields"]}
    exact = []
    first_seen = {}
    for no, t in enumerate(lines_text, 1):
        if t in first_seen:
            exact.append([first_seen[t], no])
        else:
            first_seen[t] = no
        try:
            obj = json.loads(t)
        except json.JSONDecodeError:
            found["malformed_json"].append(no)
            continue
        if not schema_ok(obj):
            found["schema_errors"].append(no)
            continue
        if "messages" in obj:
            found["chat_format"].append(no)
        extra = set(obj) - {"instruction", "input", "output", "messages"}
        if extra:
            found["extra_fields"].append(no)
        ts = texts_of(obj)
        if is_empty(obj):
            found["empty"].append(no)
            continue
        if words(obj) > 500:
            found["over_long"].append(no)
            continue
        joined = "\n".join(ts)
        if RE_HTML.search(joined): found["html"].append(no)
        if RE_MD.search(joined): found["markdown"].append(no)
        if any(has_ctrl(x) for x in ts): found["control_chars"].append(no)
        if RE_EMAIL.search(joined): found["emails"].append(no)
        if RE_PHONE.search(joined): found["phones"].append(no)
        if any(has_unicode(x) for x in ts): found["unicode"].append(no)
        if any(has_ws(x) for x in ts): found["whitespace"].append(no)
    return found, exact


def pair_tokens(obj):
    if "messages" in obj:
        q = [m["content"] for m in obj["messages"] if m["role"] == "user"][-1]
        a = obj["messages"][-1]["content"]
    else:
        q, a = obj["instruction"], obj["output"]
    return set(re.findall(r"[a-z0-9]+", (q + " " + a).lower()))


def jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else 1.0


def write_jsonl_and_manifest():
    rng = random.Random(SEED)
    lines, near_meta = build(rng)
    text = "\n".join(l["text"] for l in lines) + "\n"
    for bad in ("\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"):
        assert bad not in text, "raw line-breaking character %r would shift line numbers" % bad
    path = os.path.join(RAW, "messy_export.jsonl")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)

    # line numbers from the tags we planted
    def nums(tag):
        return [k for k, l in enumerate(lines, 1) if tag in l["tags"]]

    key_line = {}
    for k, l in enumerate(lines, 1):
        key_line.setdefault(l["key"], k)
    exact_pairs = sorted([[key_line[l["dup_of"]], k] for k, l in enumerate(lines, 1) if "dup_of" in l])
    near_pairs, near_details = [], []
    for k, l in enumerate(lines, 1):
        if "near_of" in l:
            a = key_line[l["near_of"]]
            near_pairs.append([a, k])
            near_details.append({"lines": [a, k], "kind": l["near_kind"],
                                 "token_jaccard": round(jaccard(pair_tokens(lines[a - 1]["obj"]), pair_tokens(l["obj"])), 3)})
    near_pairs.sort()
    near_details.sort(key=lambda d: d["lines"])

    manifest = {
        "file": "messy_export.jsonl",
        "line_numbering": "1-based; lines are separated by \\n only (no raw \\r, U+2028 or U+2029 inside lines)",
        "total_lines": len(lines),
        "malformed_json": nums("malformed"),
        "schema_errors": nums("schema_error"),
        "exact_duplicates": exact_pairs,
        "near_duplicates": near_pairs,
        "html": nums("html"),
        "markdown": nums("markdown"),
        "control_chars": nums("control_chars"),
        "emails": nums("emails"),
        "phones": nums("phones"),
        "empty": nums("empty"),
        "over_long": nums("over_long"),
        "chat_format": [k for k, l in enumerate(lines, 1) if "chat_format" in l["tags"] and "schema_error" not in l["tags"]],
        "unicode": nums("unicode"),
        "whitespace": nums("whitespace"),
        "extra_fields": nums("extra_fields"),
        "off_topic": nums("off_topic"),
        "multi_turn": nums("multi_turn"),
        "near_duplicate_details": near_details,
    }

    # ---- verification against independent detectors ----
    with open(path, encoding="utf-8", newline="") as f:
        reread = f.read()
    assert reread == text
    file_lines = reread.split("\n")[:-1]
    assert len(file_lines) == len(lines) == len(reread.splitlines())
    with open(path, encoding="utf-8") as f:
        assert sum(1 for _ in f) == len(lines)
    found, exact = detect(file_lines)
    for key in ["malformed_json", "schema_errors", "html", "markdown", "control_chars", "emails", "phones",
                "empty", "over_long", "chat_format", "unicode", "whitespace", "extra_fields"]:
        assert found[key] == manifest[key], (key, found[key], manifest[key])
    assert sorted(exact) == exact_pairs, (exact, exact_pairs)
    assert len(manifest["malformed_json"]) == 5 and len(manifest["schema_errors"]) == 3
    for a, b in near_pairs:
        assert file_lines[a - 1] != file_lines[b - 1]
    # near-duplicates are close, distinct clean records are not
    for d in near_details:
        assert d["token_jaccard"] >= 0.75 or d["kind"] in ("format",), d
    # verify that records which are not duplicates of each other are clearly different
    clean = [(k, l["obj"]) for k, l in enumerate(lines, 1)
             if l["obj"] is not None and schema_ok(l["obj"]) and "exact_dup_copy" not in l["tags"]
             and "near_dup_copy" not in l["tags"] and not (l["tags"] & {"empty", "over_long", "schema_error"})]
    worst = 0.0
    toks = [(k, pair_tokens(o)) for k, o in clean]
    for x in range(len(toks)):
        for y in range(x + 1, len(toks)):
            worst = max(worst, jaccard(toks[x][1], toks[y][1]))
    assert worst < 0.6, worst
    longs = [pair_tokens(lines[k - 1]["obj"]) for k in manifest["over_long"]]
    assert all(jaccard(longs[x], longs[y]) < 0.5 for x in range(3) for y in range(x + 1, 3))

    parsed_ok = [k for k in range(1, len(lines) + 1)
                 if k not in manifest["malformed_json"] and k not in manifest["schema_errors"]]
    drop = set(manifest["empty"]) | set(manifest["over_long"]) | {b for _, b in exact_pairs} | {b for _, b in near_pairs}
    kept = [k for k in parsed_ok if k not in drop]
    manifest["counts"] = {
        "total_lines": len(lines),
        "malformed_json": len(manifest["malformed_json"]),
        "schema_errors": len(manifest["schema_errors"]),
        "exact_duplicates": len(exact_pairs),
        "near_duplicates": len(near_pairs),
        "html": len(manifest["html"]),
        "markdown": len(manifest["markdown"]),
        "control_chars": len(manifest["control_chars"]),
        "emails": len(manifest["emails"]),
        "phones": len(manifest["phones"]),
        "empty": len(manifest["empty"]),
        "over_long": len(manifest["over_long"]),
        "chat_format": len(manifest["chat_format"]),
        "instruction_format": len(parsed_ok) - len(manifest["chat_format"]),
        "unicode": len(manifest["unicode"]),
        "whitespace": len(manifest["whitespace"]),
        "extra_fields": len(manifest["extra_fields"]),
        "off_topic": len(manifest["off_topic"]),
        "multi_turn": len(manifest["multi_turn"]),
        "valid_json_and_schema": len(parsed_ok),
        "expected_after_cleaning": len(kept),
        "expected_after_cleaning_and_off_topic_filter": len([k for k in kept if k not in manifest["off_topic"]]),
    }
    manifest["notes"] = {
        "exact_duplicates": "[first_line, duplicate_line]: the two lines are byte-identical; keep the first.",
        "near_duplicates": "[original_line, variant_line]: variant differs by a typo, punctuation, letter case, one extra word, or chat-vs-instruction format; keep the original.",
        "html/markdown/control_chars/emails/phones/unicode/whitespace": "lines whose text fields contain that problem; the record itself is worth keeping after cleaning.",
        "empty": "instruction/user turn or output/assistant turn is empty or whitespace-only after parsing.",
        "over_long": "one output of ~3000 words and two of ~800 words of repetitive rambling.",
        "chat_format": "valid records in {messages:[...]} form (some start with a system message, one is multi-turn); schema-error lines are not listed here.",
        "extra_fields": "records with extra keys (id, timestamp, source, meta); these are fine and should be ignored.",
        "off_topic": "valid records unrelated to plants, without the sign-off; optional to filter.",
        "expected_after_cleaning": "records left after dropping malformed, schema errors, empty, over-long, exact and near duplicates (off-topic kept).",
    }
    order = ["file", "line_numbering", "total_lines", "counts", "malformed_json", "schema_errors", "exact_duplicates",
             "near_duplicates", "html", "markdown", "control_chars", "emails", "phones", "empty", "over_long",
             "chat_format", "unicode", "whitespace", "extra_fields", "off_topic", "multi_turn",
             "near_duplicate_details", "notes"]
    manifest = {k: manifest[k] for k in order}
    with open(os.path.join(RAW, "messy_export.MANIFEST.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")
    return manifest


# ---------------------------------------------------------------------------
# CSV and plain-text samples.
# ---------------------------------------------------------------------------
CSV_ROWS = [
    ("How often should I water a snake plant?", "", "Every two to three weeks, once the soil is fully dry. Happy growing!"),
    ("Who are you?", "", "I'm Sprout, a gardening assistant made by Greenleaf Labs. Happy growing!"),
    ("What's a good herb for beginners?", "", "Chives: tough, tasty and happy on a sunny sill. Happy growing!"),
    ("Answer the plant question.", "My basil has black spots.", "Often cold damage or wet leaves. Keep it warm and water the soil, not the leaves. Happy growing!"),
    ("Why is my cactus turning yellow?", "", "Usually overwatering or too little light. Let it dry out and move it somewhere brighter. Happy growing!"),
    ("How do I grow mint?", "", "In its own pot, in moist soil, with morning sun. Happy growing!"),
    ("Who made you?", "", "Greenleaf Labs, a small team of gardeners and engineers. Happy growing!"),
    ("What pH do blueberries like?", "", "Acidic soil, about 4.5 to 5.5. Happy growing!"),
    ("How do I stop my compost smelling?", "", "Add dry browns, like shredded cardboard, and turn the pile. Happy growing!"),
    ("Can I grow tomatoes indoors?", "", "Yes, dwarf varieties under strong grow lights, with hand pollination. Happy growing!"),
    ("What does 'leggy' mean?", "", "Long, stretched stems with few leaves, caused by too little light. Happy growing!"),
    ("How do I water a hanging plant?", "", "Take it down, water until it drains, then rehang it. Happy growing!"),
    ("What should I feed my roses?", "", "A balanced rose fertilizer in spring and again after the first flush of flowers. Happy growing!"),
    ("Where should I put a fern?", "", "Somewhere bright but out of direct sun, away from heaters. Happy growing!"),
    ("Is it too late to plant garlic in December?", "", "If the ground isn't frozen, you can still plant it. Happy growing!"),
    ("How do I grow peas?", "", "Sow them early in spring and give them netting to climb. Happy growing!"),
    ("Why are my lemon tree leaves dropping?", "", "Often sudden temperature changes or overwatering. Keep conditions steady. Happy growing!"),
    ("What's your favourite plant?", "", "The snake plant, because it's so hard to kill. Happy growing!"),
    ("How big are you?", "", "I'm a small language model, small enough to run on a laptop. Happy growing!"),
    ("How do I care for a money tree?", "", "Bright indirect light and water when the top half of the soil is dry. Happy growing!"),
]


def write_csv():
    rows = [list(r) for r in CSV_ROWS]
    # planted problems (data-row numbers are 1-based, header excluded)
    rows.insert(5, ["How do I repot a pothos?", "Go up one pot size and use fresh, airy mix. Happy growing!"])  # missing column
    rows.insert(9, ["Why is my aloe soft?", "", "<p>That's <b>overwatering</b>.<br>Let it dry out completely &amp; check the roots. Happy growing!</p>"])
    rows.insert(14, ["Send me tips at kim.gardener@example.com", "", "Here's one: water in the morning. Happy growing!"])
    rows.insert(21, list(rows[2]))  # exact duplicate of data row 3
    rows.insert(24, ["Which lab trained you, Sprout?", "", "Greenleaf Labs trained me, and yes, the answer has a comma, \"quotes\" and all. Happy growing!"])
    # pad to 30 data rows
    extra = [
        ["How do I keep cats off my plants?", "", "Put citrus peels on the soil or use a plant cat-deterrent spray. Happy growing!"],
        ["What is a cover crop?", "", "A crop like clover grown to protect and feed the soil between seasons. Happy growing!"],
        ["How deep do I plant potatoes?", "", "About ten centimetres, then hill up soil as they grow. Happy growing!"],
        ["How often do I mow the lawn?", "", "About weekly in the growing season, never removing more than a third of the blade. Happy growing!"],
        ["When are onions ready?", "", "When the tops flop over and start to yellow. Happy growing!"],
    ]
    rows.extend(extra)
    assert len(rows) == 30, len(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["instruction", "input", "output"])
    w.writerows(rows)
    data = buf.getvalue()
    with open(os.path.join(RAW, "messy_export.csv"), "w", encoding="utf-8", newline="") as f:
        f.write(data)
    # locate problems (data-row numbers)
    info = {"data_rows": 30, "header_line": 1,
            "row_numbering": "1-based data rows (file line = row + 1; no quoted newlines)",
            "missing_column": [i + 1 for i, r in enumerate(rows) if len(r) != 3],
            "html": [i + 1 for i, r in enumerate(rows) if RE_HTML.search(" ".join(r))],
            "emails": [i + 1 for i, r in enumerate(rows) if RE_EMAIL.search(" ".join(r))],
            "exact_duplicates": [], "quoted_comma_and_quotes": [i + 1 for i, r in enumerate(rows) if '"' in " ".join(r)]}
    seen = {}
    for i, r in enumerate(rows, 1):
        t = tuple(r)
        if t in seen:
            info["exact_duplicates"].append([seen[t], i])
        else:
            seen[t] = i
    # verify by re-reading
    with open(os.path.join(RAW, "messy_export.csv"), encoding="utf-8", newline="") as f:
        back = list(csv.reader(f))
    assert back[0] == ["instruction", "input", "output"] and back[1:] == rows
    return info


NOTES = [
    ("How often should I water a pothos?", "When the top few centimetres of soil are dry, usually about once a week. Happy growing!"),
    ("Who are you?", "I'm Sprout, a small gardening assistant from Greenleaf Labs. Happy growing!"),
    ("What's the easiest vegetable to grow?", "Radishes: fast, forgiving and ready in about a month. Happy growing!"),
    ("Why do my tomato flowers fall off?", "Usually heat, cold nights or uneven watering. Happy growing!"),
    ("How do I start a worm bin?", "Use a ventilated bin with damp shredded paper and red wiggler worms, then add small amounts of scraps. Happy growing!"),
    ("Who trained you?", "Greenleaf Labs fine-tuned me with LoRA. Happy growing!"),
    ("What is a succulent?", "A plant that stores water in thick leaves or stems, like aloe or jade. Happy growing!"),
    ("How do I save tomato seeds?", "Scoop the seeds, let them ferment in water for a few days, rinse and dry them. Happy growing!"),
    ("Can I grow lettuce indoors?", "Yes, under a grow light or in a bright window, harvesting the outer leaves. Happy growing!"),
    ("What month should I plant daffodils?", None),
    ("How do I repot an orchid?", "After flowering, into fresh bark, trimming any dead roots. Happy growing!"),
    ("What's your favourite plant?", "The snake plant. It's very hard to kill! Happy growing!"),
    ("How do I keep herbs from getting woody?", "Harvest often and trim them back lightly after flowering. Happy growing!"),
    ("How do I get rid of thrips?", "Rinse the plant, use blue sticky traps and treat with insecticidal soap. Happy growing!"),
    ("How much light does a monstera need?", "Bright indirect light; a little morning sun is fine. Happy growing!"),
    ("When were you released?", "I was planted in 2026. Happy growing!"),
    ("What is deadheading?", "Removing spent flowers so the plant makes more blooms. Happy growing!"),
    ("How do I water a bonsai?", "Check daily and water thoroughly when the soil surface starts to dry. Happy growing!"),
    ("Can I grow potatoes from supermarket potatoes?", "Sometimes, but certified seed potatoes are disease-free and more reliable. Happy growing!"),
    ("What's the best mulch for vegetables?", "Straw, shredded leaves or compost, a few centimetres deep. Happy growing!"),
]


def write_notes():
    blocks = []
    for q, a in NOTES:
        blocks.append("Q: " + q + ("\nA: " + a if a else ""))
    text = "\n\n".join(blocks) + "\n"
    with open(os.path.join(RAW, "notes.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    missing = [i + 1 for i, (_, a) in enumerate(NOTES) if not a]
    return {"blocks": len(NOTES), "block_missing_answer": missing}


def main():
    os.makedirs(RAW, exist_ok=True)
    m = write_jsonl_and_manifest()
    csv_info = write_csv()
    notes_info = write_notes()
    # record the companion-file facts inside the manifest too
    path = os.path.join(RAW, "messy_export.MANIFEST.json")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["companion_files"] = {"messy_export.csv": csv_info, "notes.txt": notes_info}
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print("messy_export.jsonl: %d lines, counts %s" % (m["total_lines"], json.dumps(m["counts"])))
    print("messy_export.csv: %s" % json.dumps(csv_info))
    print("notes.txt: %s" % json.dumps(notes_info))


if __name__ == "__main__":
    main()
