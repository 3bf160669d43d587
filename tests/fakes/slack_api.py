from bot.devtools.fake_slack import *  # noqa: F403  (the implementation ships in the package)
