"""Device links: the wire protocol between controllers, as the far side's host interface.

Owns ``listener`` (``splitpoint serve --device-listen``: another controller streams one LUN's
sequenced requests and TRIGGERs into this controller's ring). The near side of a link is a HAL
device (``splitpoint.hal.link``) that mirror paths feed like any other backup device. Nothing
here touches storage: every request goes through the controller's ring.
"""
