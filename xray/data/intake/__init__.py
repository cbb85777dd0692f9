"""The download stage's intake: fetch or open the source, find the labelled images, decode, screen, write."""
