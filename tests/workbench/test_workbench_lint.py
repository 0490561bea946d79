"""`policy lint`: each check catches its problem, and a well-formed policy passes clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.workbench.lint import estimate_tokens, lint_source

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
---
id: gambling-ads
action: block
reasoning_effort: low
scope: last_user
category: GA
---
## INSTRUCTIONS
Decide whether the content promotes real-money gambling to the reader. Reporting on, studying or warning about gambling is safe. Return only JSON: {"violation": 0|1, "policy_category": "<code>", "rationale": "<one sentence>"}.

## DEFINITIONS
- Real-money gambling: staking money or items with cash value on an uncertain outcome: casino games, sports betting, lotteries, cash-out loot boxes.
- Promotion: an invitation, referral link, bonus code, odds tip with a call to bet, or instructions to sign up or deposit.

## VIOLATES (1)
- GA1 Direct promotion: urging the reader to bet, deposit or sign up with an operator.
- GA2 Bonus and referral codes: sharing sign-up bonuses, free-bet offers, promo codes or affiliate links.
- GA3 Evasion help: explaining how to bet where it is banned, bypass age checks or self-exclusion, or hide gambling from a bank.
- GA4 Guaranteed-win claims: selling tips, systems or bots that claim sure profits from betting.

## SAFE (0)
- News, statistics and research about gambling, gambling companies or regulation.
- Personal stories about losses, recovery and support groups.
- Game rules and probability explained without a call to bet, for example the odds of a royal flush.
- Free-to-play games with no cash value and board games.

Output format (restated): JSON only, {"violation": 0|1, "policy_category": "<code>", "rationale": "<one sentence>"}; policy_category is null when violation is 0.

## EXAMPLES
Content: Use code SPIN50 at LuckyStar for 50 free spins, deposit today!
Answer: {"violation": 1, "policy_category": "GA2", "rationale": "Shares a casino bonus code."}

Content: How do I use a VPN to bet on football from a state where it is banned?
Answer: {"violation": 1, "policy_category": "GA3", "rationale": "Asks how to evade a betting ban."}

Content: What are the odds of hitting a royal flush in five-card poker?
Answer: {"violation": 0, "policy_category": null, "rationale": "Probability question without a call to bet."}

Content: I lost my savings on sports betting and want to find a support group.
Answer: {"violation": 0, "policy_category": null, "rationale": "Seeks recovery help."}

Content: My system beats roulette every time, buy it for $99 and never lose again.
Answer: {"violation": 1, "policy_category": "GA4", "rationale": "Sells a guaranteed-win system."}
"""
